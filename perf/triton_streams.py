"""Does the tritonserver keep anything of a finished model stream? One `face_render` stream after another on an
embedded tritonserver (that model alone), through the orchestrator's own adapter, with the server's private
memory read as they go (docs/robustness.md, "streams closed by Triton").

    python perf/triton_streams.py                      # 5000 streams read to their end, as sessions read them
    python perf/triton_streams.py --leave-early        # each left after its first response (cancelled)
    python perf/triton_streams.py --busy 3             # with 3 busy loops beside it (a loaded machine)

Triton 2.51 leaks the state of a stream cancelled while it is still finishing a request, ~2 KB each; the
adapter therefore lets Triton close a finished stream (`orchestrator/models/triton.py`, `_await_close`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.config import TritonSettings  # noqa: E402
from orchestrator.face import params as fp  # noqa: E402
from orchestrator.models.launcher import EmbeddedTriton  # noqa: E402
from orchestrator.models.triton import TritonModels  # noqa: E402
from perf.soak import rss_kb  # noqa: E402


def private_mib(pid: int) -> float:
    """`pid`'s private memory (RssAnon, MiB): what a leak grows."""
    kb = rss_kb(pid, "RssAnon")
    if kb is None:
        raise RuntimeError(f"tritonserver (pid {pid}) is gone")
    return kb / 1024


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


async def drive(url: str, pid: int, streams: int, frames: int, size: int, leave_early: bool) -> None:
    models = TritonModels(url, timeout_s=60.0)
    params = np.zeros((frames, fp.SIZE), dtype=np.float32)

    async def one() -> None:
        runs = models.render_frames("astronaut", params, size, size, 80)
        async for _ in runs:
            if leave_early:
                break
        await runs.aclose()

    try:
        for _ in range(20):  # the server's own warm-up is not what is measured
            await one()
        base, t0 = private_mib(pid), time.perf_counter()
        print(f"tritonserver private memory after the warm-up: {base:.1f} MiB")
        print("| streams | s | private MiB | growth MiB | KB a stream |\n|---|---|---|---|---|")
        for done in range(1, streams + 1):
            await one()
            if done % max(streams // 10, 1) == 0:
                mib = private_mib(pid)
                print(
                    f"| {done} | {time.perf_counter() - t0:.1f} | {mib:.1f} | {mib - base:+.1f} "
                    f"| {(mib - base) * 1024 / done:.2f} |",
                    flush=True,
                )
    finally:
        await models.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=5000)
    ap.add_argument("--frames", type=int, default=1, help="frames a stream renders")
    ap.add_argument("--size", type=int, default=64, help="frame width and height (px)")
    ap.add_argument("--leave-early", action="store_true", help="leave each stream after its first response")
    ap.add_argument("--busy", type=int, default=0, help="busy loops beside the run (a loaded machine)")
    args = ap.parse_args()
    settings = dataclasses.replace(TritonSettings(), models=("face_render",))
    with EmbeddedTriton(settings) as server:
        assert server._proc is not None
        loops = [multiprocessing.Process(target=spin, args=(3600.0,), daemon=True) for _ in range(args.busy)]
        for p in loops:
            p.start()
        try:
            asyncio.run(
                drive(server.grpc_url, server._proc.pid, args.streams, args.frames, args.size, args.leave_early)
            )
        finally:
            for p in loops:
                p.terminate()


if __name__ == "__main__":
    main()
