"""Make a freshly saved micro-benchmark baseline safe to check in: no host name, no absolute path of this machine.

    python perf/micro/scrub_baseline.py perf/micro/baseline.new

pytest-benchmark records machine and commit facts in every saved run. The conftest hooks already drop the host name
and the checkout folder's name; this pass is the safety net for the rest: every string in the JSON that holds this
checkout's absolute location, the home folder or the host name is rewritten (the location becomes relative), and the
script says what it changed. The numbers are never touched.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def scrub(value: Any, changed: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: scrub(v, changed) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, changed) for v in value]
    if not isinstance(value, str):
        return value
    out = value.replace(str(ROOT) + "/", "").replace(str(ROOT), ".").replace(str(Path.home()), "~")
    host = platform.node()
    if host and len(host) > 3:
        out = out.replace(host, "(host)")
    if out != value:
        changed.append(out)
    return out


def main(folder: str) -> int:
    files = sorted(Path(folder).glob("*/*.json"))
    if not files:
        print(f"scrub_baseline: no saved run under {folder}", file=sys.stderr)
        return 1
    for path in files:
        changed: list[str] = []
        data = scrub(json.loads(path.read_text()), changed)
        data.get("machine_info", {})["node"] = "(not recorded)"
        path.write_text(json.dumps(data, indent=4, ensure_ascii=True) + "\n")
        note = f"{len(changed)} string(s) rewritten" if changed else "nothing machine-specific found"
        print(f"scrub_baseline: {path.parent.name}/{path.name}: {len(data['benchmarks'])} benchmarks, {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "perf/micro/baseline"))
