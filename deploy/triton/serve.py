"""The inference image's entrypoint: NVIDIA's `tritonserver` with the flags the embedded launcher uses.

The command line comes from `orchestrator.models.launcher.EmbeddedTriton.command` (the embedded default's own
flags, so the two never drift apart) with what differs in a container rewritten:

- the image's server binary, backend directory and cache directory instead of the `nvidia-pytriton` wheel's
  (the image's Python backend runs the wheel's Python 3.11 stub, linked in at build time: deploy/triton/Dockerfile);
- listening on all interfaces, on Triton's standard ports (HTTP 8000, gRPC 8001, metrics 8002): the container's
  network decides who reaches them, not a loopback address;
- GPU metrics on when the container sees an NVIDIA device;
- `--allow-metrics=true` stated, and any arguments given to the container appended.

The models loaded are `triton.models` of the orchestrator's settings (`DUET_TRITON__MODELS` may narrow them), the
same list the embedded server loads. The environment (the virtualenv's `bin` first on PATH, libpython's folder on
LD_LIBRARY_PATH, the repository on PYTHONPATH, OMP_NUM_THREADS=1) is the launcher's too.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from orchestrator.config import REPO_ROOT, TritonSettings, load_settings
from orchestrator.models.launcher import EmbeddedTriton

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002  # Triton's standard ports (compose and Helm use them)
TRITON_HOME = Path("/opt/tritonserver")  # where NVIDIA's images install the server
LISTEN = "0.0.0.0"
ADDRESSES = ("--http-address", "--grpc-address", "--metrics-address")


def has_gpu() -> bool:
    """The NVIDIA container runtime gives the container /dev/nvidiactl when a GPU is passed through."""
    return Path("/dev/nvidiactl").exists()


def container_settings(settings: TritonSettings) -> TritonSettings:
    return dataclasses.replace(
        settings,
        model_repository=str(REPO_ROOT / "model_repository"),
        http_port=HTTP_PORT,
        grpc_port=GRPC_PORT,
        metrics_port=METRICS_PORT,
    )


def command(
    launcher_command: Sequence[str], *, triton_home: Path = TRITON_HOME, gpu: bool, extra: Sequence[str] = ()
) -> list[str]:
    """The launcher's command line, rewritten for the image (see the module's docstring)."""
    values = {
        "--backend-directory": str(triton_home / "backends"),
        "--cache-directory": str(triton_home / "caches"),
        "--allow-gpu-metrics": "true" if gpu else "false",
        **dict.fromkeys(ADDRESSES, LISTEN),
    }
    out = [str(triton_home / "bin" / "tritonserver")]
    for arg in launcher_command[1:]:
        name = arg.split("=", 1)[0]
        out.append(f"{name}={values[name]}" if name in values else arg)
    missing = [name for name in values if not any(a.startswith(f"{name}=") for a in out)]
    if missing:  # the launcher changed its flags: fail loudly rather than start a server configured otherwise
        raise SystemExit(f"serve.py: the launcher's command line has no {', '.join(missing)}")
    out.append("--allow-metrics=true")
    out.extend(extra)
    return out


def main(argv: Sequence[str]) -> None:
    settings = container_settings(load_settings().triton)
    launcher = EmbeddedTriton(settings)
    cmd = command(launcher.command(Path("unused")), gpu=has_gpu(), extra=argv)
    env = launcher._env()  # the launcher's environment for the server and its Python stubs
    print("serve.py: " + " ".join(cmd), file=sys.stderr, flush=True)
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main(sys.argv[1:])
