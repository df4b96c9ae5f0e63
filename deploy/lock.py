"""Write deploy/constraints.txt: every distribution of the current virtualenv, pinned, for the image builds.

Run it with the virtualenv that `make setup` made (the one the tests run in):

    .venv/bin/python deploy/lock.py

Both Dockerfiles build with `PIP_CONSTRAINT` pointing at the file, so pip (in `scripts/bootstrap.sh` too) picks
exactly these versions; a dependency the file does not name is resolved as usual. Left out: the project itself
(installed from the build context), pip, setuptools and wheel (build tools: a pin on them would also bind the
isolated build environments of source packages). Local version labels (`2.13.0+cpu`) are dropped, so the same pin
takes the CUDA or the CPU build of a wheel.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

LEFT_OUT = {"duet", "pip", "setuptools", "wheel"}
OUT = Path(__file__).resolve().parent / "constraints.txt"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> list[str]:
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = canonical(dist.metadata["Name"])
        if name not in LEFT_OUT:
            found[name] = dist.version.split("+", 1)[0]
    return [f"{name}=={version}" for name, version in sorted(found.items())]


def main() -> int:
    header = [
        "# Pinned versions for the image builds (PIP_CONSTRAINT in deploy/*/Dockerfile): the virtualenv that",
        f"# `make setup` made (the one the tests run in), Python {sys.version.split()[0]}, written by deploy/lock.py",
        f"# on {datetime.now(UTC).date().isoformat()}. Regenerate it after changing pyproject.toml's dependencies.",
    ]
    OUT.write_text("\n".join([*header, *pins()]) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
