"""How many simultaneous conversations one machine carries in real time.

N simulated users (recorded conversation files from perf/data/conversations, streamed at real time through
the SDK, exactly like `duet talk`) talk to one `duet serve` at once, for N = 1, 2, 3, ... The largest N
where every session stays real-time (the floor model's decisions keep up with the audio: p95 `compute_ms`
under 250 ms) and the p95 response latency (true end of user speech → first replica audio on the session
timeline) stays under 1 s is reported, with where the time went: Triton's own per-model queue and compute
time over the run, from its Prometheus metrics.

Nothing is dropped: a labelled user turn with no reply before the next one is **unanswered** and counts in
the percentiles as an infinitely late reply; a session whose `duet talk` failed counts every turn of its file
as unanswered (and as a failed session). A level with any unanswered turn is not within target.

    .venv/bin/python perf/session_load.py [--levels 1,2,3,4,6] [--split dev] [--out perf/out/session_load.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients"))

from duet.talk import talk  # noqa: E402
from orchestrator.models.launcher import free_port  # noqa: E402

DATA = ROOT / "perf" / "data" / "conversations"
METRIC = re.compile(r'^(nv_inference_(?:queue|compute_infer)_duration_us|nv_inference_request_success)\{model="(\w+)"')
RT_COMPUTE_MS = 250.0
TARGET_P95_S = 1.0


def scrape(metrics_url: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for line in urllib.request.urlopen(metrics_url, timeout=5).read().decode().splitlines():
        if m := METRIC.match(line):
            key = (m.group(2), m.group(1))
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def response_latencies(label: dict[str, Any], events: list[dict[str, Any]]) -> list[float | None]:
    """Per labelled user turn: seconds from its end to the next replica start (before the next turn), or
    None when the turn went unanswered."""
    starts = sorted(float(e["t"]) for e in events if e["type"] == "replica_speaking_start")
    turns = sorted(label["turns"], key=lambda x: x["start"])
    out: list[float | None] = []
    for i, turn in enumerate(turns):
        nxt = turns[i + 1]["start"] if i + 1 < len(turns) else float("inf")
        after = [s for s in starts if turn["end"] - 0.3 <= s < nxt]
        out.append(after[0] - turn["end"] if after else None)
    return out


def latency_summary(latencies: list[float | None]) -> dict[str, Any]:
    """Answered and unanswered turns, and percentiles with each unanswered turn as an infinitely late reply
    (so a p95 is finite only if at most 5 % of the turns went unanswered)."""
    values = [math.inf if x is None else x for x in latencies]

    def pct(q: float) -> float | None:
        if not values:
            return None
        v = float(np.percentile(values, q, method="higher"))
        return v if math.isinf(v) else round(v, 3)

    return {
        "turns": len(latencies),
        "replies": sum(x is not None for x in latencies),
        "unanswered": sum(x is None for x in latencies),
        "response_p50_s": pct(50),
        "response_p95_s": pct(95),
    }


async def one_level(n: int, files: list[Path], server: str, workdir: Path) -> dict[str, Any]:
    picks = [files[i % len(files)] for i in range(n)]
    logs: list[list[dict[str, Any]]] = [[] for _ in picks]
    failures: dict[int, str] = {}

    async def user(i: int, wav: Path) -> None:
        await asyncio.sleep(0.37 * i)  # users don't all start on the same sample
        try:
            await talk(wav, server, workdir / f"n{n}-{i}", on_event=logs[i].append)
        except Exception as exc:  # a failed session counts against the level; the others go on
            failures[i] = f"{type(exc).__name__}: {exc}"

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i, wav in enumerate(picks):
            tg.create_task(user(i, wav), name=f"load-user-{i}")
    wall = time.perf_counter() - t0
    compute = [float(e["compute_ms"]) for log in logs for e in log if "compute_ms" in e]
    latency: list[float | None] = []
    for i, (wav, log) in enumerate(zip(picks, logs, strict=True)):
        label = json.loads(wav.with_suffix(".json").read_text())
        latency += [None] * len(label["turns"]) if i in failures else response_latencies(label, log)
    return {
        "sessions": n,
        "wall_s": round(wall, 1),
        "compute_ms_p95": round(float(np.percentile(compute, 95)), 1) if compute else None,
        **latency_summary(latency),
        "errors": sum(1 for log in logs for e in log if e.get("type") == "error"),
        "failed_sessions": len(failures),
        "failures": sorted(set(failures.values())),
    }


def within_target(row: dict[str, Any]) -> bool:
    """Real-time floor, p95 response under target, and every turn answered without errors."""
    return bool(
        row["compute_ms_p95"] is not None
        and row["compute_ms_p95"] < RT_COMPUTE_MS
        and row["response_p95_s"] is not None
        and row["response_p95_s"] < TARGET_P95_S
        and row["unanswered"] == 0
        and row["failed_sessions"] == 0
        and row["errors"] == 0
    )


def start_stack() -> tuple[list[subprocess.Popen[str]], str, str]:
    tri = subprocess.Popen(
        [sys.executable, str(ROOT / "perf" / "triton_up.py")], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert tri.stdout is not None
    grpc_url, metrics_url = tri.stdout.readline().split()
    port = free_port()
    env = dict(os.environ, DUET_TRITON__URL=grpc_url)
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "duet"), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert serve.stdout is not None
    while "serving sessions on" not in (line := serve.stdout.readline()):
        if serve.poll() is not None:
            raise RuntimeError(f"duet serve exited: {line}")
    return [serve, tri], f"127.0.0.1:{port}", metrics_url


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="1,2,3,4,6")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--out", default=str(ROOT / "perf" / "out" / "session_load.json"))
    args = ap.parse_args(argv)
    files = sorted((DATA / args.split).glob("*.wav"))
    if not files:
        print(f"no conversation files in {DATA / args.split}", file=sys.stderr)
        return 2
    procs, server, metrics_url = start_stack()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="duet-load-") as tmp:
            for n in (int(x) for x in args.levels.split(",")):
                before = scrape(metrics_url)
                row = asyncio.run(one_level(n, files, server, Path(tmp)))
                after = scrape(metrics_url)
                per_model: dict[str, dict[str, float]] = {}
                for (model, name), value in after.items():
                    d = value - before.get((model, name), 0.0)
                    per_model.setdefault(model, {})[name] = d
                row["triton"] = {
                    m: {
                        "requests": int(v.get("nv_inference_request_success", 0)),
                        "queue_ms": round(v.get("nv_inference_queue_duration_us", 0) / 1000, 1),
                        "compute_ms": round(v.get("nv_inference_compute_infer_duration_us", 0) / 1000, 1),
                    }
                    for m, v in sorted(per_model.items())
                    if v.get("nv_inference_request_success", 0) > 0
                }
                row["ok"] = within_target(row)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "triton"}), flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    best = max((r["sessions"] for r in rows if r["ok"]), default=0)
    print(
        "\n| sessions | response p50 | p95 | floor compute p95 | answered | unanswered | failed sessions "
        "| errors | within target |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['sessions']} | {r['response_p50_s']} s | {r['response_p95_s']} s | {r['compute_ms_p95']} ms "
            f"| {r['replies']}/{r['turns']} | {r['unanswered']} | {r['failed_sessions']} | {r['errors']} "
            f"| {'yes' if r['ok'] else 'no'} |"
        )
    print("(p50/p95 count each unanswered turn as an infinitely late reply)")
    print(f"\nlargest N within target (p95 response < {TARGET_P95_S:.0f} s, real-time floor): {best}")
    if rows:
        last = rows[-1]["triton"]
        print(f"\nwhere the time went at N={rows[-1]['sessions']} (Triton, summed over the run):")
        print("| model | requests | queue ms | compute ms |\n|---|---|---|---|")
        for m, v in last.items():
            print(f"| {m} | {v['requests']} | {v['queue_ms']} | {v['compute_ms']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"levels": rows, "largest_n": best}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
