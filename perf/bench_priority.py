"""Priority tiers: how fast a `priority` tenant's model requests are served while standard-tier load saturates
the models, against the same requests at the default priority, in the same run (`make bench-priority`).

A real tritonserver with the `llm` and `asr` models. Background workers keep both saturated with
default-priority requests (more than the models serve at once, so requests queue). Probes are sent one at a
time, alternating priority 1 (what a `priority` tenant's sessions send: `TritonModels.with_priority`) and
the default. The figures are the probes' time to the first token (llm) and to the transcript (asr); an
idle machine gives the floor.

Usage: python perf/bench_priority.py [--probes 12] [--load 6] [--out perf/out/bench_priority.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from duet.wav import read_pcm16  # noqa: E402
from orchestrator.config import TritonSettings  # noqa: E402
from orchestrator.models.launcher import EmbeddedTriton  # noqa: E402
from orchestrator.models.ports import ChatMessage, LlmRequest  # noqa: E402
from orchestrator.models.triton import TritonModels  # noqa: E402

SAMPLE = ROOT / "perf" / "data" / "samples" / "demo_user.wav"
MODEL = "smollm2-135m"  # the fast model: the load is many requests, not long ones
TOPICS = ("the sea", "a bicycle", "winter", "a library", "coffee", "trains", "a garden", "the moon", "bread")


def request(i: int, max_tokens: int, rid: str) -> LlmRequest:
    topic = TOPICS[i % len(TOPICS)]
    messages = (
        ChatMessage("system", f"You are assistant number {i}. Answer in full sentences."),
        ChatMessage("user", f"Tell me about {topic}, request {i}."),
    )
    return LlmRequest(messages, max_tokens=max_tokens, temperature=0.7, model=MODEL, request_id=rid)


async def first_token(models: TritonModels, req: LlmRequest) -> float:
    start = time.perf_counter()
    stream = models.generate(req)
    try:
        async for _ in stream:
            return (time.perf_counter() - start) * 1000
    finally:
        await stream.aclose()  # a probe needs only its first token
    return (time.perf_counter() - start) * 1000


async def transcript(models: TritonModels, audio: Any) -> float:
    start = time.perf_counter()
    await models.transcribe(audio, word_timings=False)
    return (time.perf_counter() - start) * 1000


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(values),
        "p50": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))],
    }


async def run(url: str, probes: int, load: int) -> dict[str, Any]:
    base = TritonModels(url, timeout_s=120)
    base.llm_timeout_s = 120
    high = base.with_priority(1)
    audio = np.frombuffer(read_pcm16(SAMPLE), dtype="<i2")[: 16000 * 4].copy()
    results: dict[str, Any] = {}
    try:
        await base.ready(("llm", "asr"))
        # idle floor: the same probes with nothing else running
        idle_llm = [await first_token(base, request(1000 + i, 4, f"idle-{i}")) for i in range(4)]
        idle_asr = [await transcript(base, audio) for _ in range(4)]
        results["idle"] = {"llm_first_token_ms": stats(idle_llm), "asr_ms": stats(idle_asr)}

        stop = asyncio.Event()
        served = {"llm": 0, "asr": 0}

        async def llm_load(w: int) -> None:
            n = 0
            while not stop.is_set():
                stream = base.generate(request(w * 1000 + n, 48, f"load-{w}-{n}"))
                try:
                    async for _ in stream:
                        if stop.is_set():
                            break
                finally:
                    await stream.aclose()
                served["llm"] += 1
                n += 1

        async def asr_load() -> None:
            while not stop.is_set():
                await base.transcribe(audio, word_timings=False)
                served["asr"] += 1

        workers = [asyncio.create_task(llm_load(w), name=f"bench-llm-load-{w}") for w in range(load)]
        workers += [asyncio.create_task(asr_load(), name=f"bench-asr-load-{w}") for w in range(load)]
        await asyncio.sleep(5.0)  # let the queues fill
        loaded: dict[str, dict[str, list[float]]] = {
            "default": {"llm": [], "asr": []},
            "priority": {"llm": [], "asr": []},
        }
        try:
            for i in range(probes):
                for tier, models in (
                    (("priority", high), ("default", base)) if i % 2 else (("default", base), ("priority", high))
                ):
                    loaded[tier]["llm"].append(await first_token(models, request(5000 + 2 * i, 4, f"probe-{tier}-{i}")))
                    loaded[tier]["asr"].append(await transcript(models, audio))
                    await asyncio.sleep(0.3)
        finally:
            stop.set()
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        for tier in ("default", "priority"):
            results[f"loaded_{tier}"] = {
                "llm_first_token_ms": stats(loaded[tier]["llm"]),
                "asr_ms": stats(loaded[tier]["asr"]),
            }
        results["load"] = {"workers_per_model": load, "served": served}
    finally:
        await base.close()
    return results


def table(r: dict[str, Any]) -> str:
    rows = [
        "| requests | llm first token p50 ms | llm p90 ms | asr (4 s clip) p50 ms | asr p90 ms |",
        "|---|---|---|---|---|",
    ]
    names = {
        "idle": "idle machine (floor)",
        "loaded_default": "under load, default priority (standard tier)",
        "loaded_priority": "under load, priority 1 (priority tier)",
    }
    for key, name in names.items():
        llm, asr = r[key]["llm_first_token_ms"], r[key]["asr_ms"]
        rows.append(f"| {name} | {llm['p50']:.0f} | {llm['p90']:.0f} | {asr['p50']:.0f} | {asr['p90']:.0f} |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--probes", type=int, default=12, help="probes per priority")
    p.add_argument("--load", type=int, default=6, help="background workers per model (llm serves 2 at once)")
    p.add_argument("--out", default=str(ROOT / "perf" / "out" / "bench_priority.json"))
    args = p.parse_args()
    with EmbeddedTriton(TritonSettings(models=("llm", "asr"))) as server:
        results = asyncio.run(run(server.grpc_url, args.probes, args.load))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nload: {results['load']}; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
