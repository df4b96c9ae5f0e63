"""Start the embedded tritonserver for a benchmark script; print `grpc_url metrics_url` and hold until killed.

.venv/bin/python perf/triton_up.py [--repository DIR] > ports.txt &
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.config import TritonSettings
from orchestrator.models.launcher import EmbeddedTriton


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repository", default=TritonSettings().model_repository)
    args = ap.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with EmbeddedTriton(TritonSettings(model_repository=args.repository)) as server:
        print(server.grpc_url, server.metrics_url, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
