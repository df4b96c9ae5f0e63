"""Summarise perf_analyzer CSVs: throughput and p99 per concurrency, batched vs not, and an upper bound on
session capacity.

The capacity line is an extrapolation, not a measurement: it divides peak model throughput by one session's
request rate, so it leaves out the orchestrator, ASR, the LLM, TTS, the face and every queueing effect. The
measured figure (real sessions streaming at real time) is `perf/session_load.py` (`make bench-load`)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAD_PER_S = 16000 / 512  # VAD windows per second of one session's audio


def row(path: Path) -> dict[str, float] | None:
    if not path.exists():
        return None
    with path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    r = rows[0]
    return {
        "thr": float(r["Inferences/Second"]),
        "p50": float(r["p50 latency"]) / 1000,
        "p99": float(r["p99 latency"]) / 1000,
        "queue": float(r["Server Queue"]) / 1000,
        "infer": float(r["Server Compute Infer"]) / 1000,
    }


def main(out: Path) -> int:
    lines = [
        "| model | concurrency | batched: infer/s | p50 ms | p99 ms | unbatched: infer/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    best: dict[str, float] = {}
    for model in ("vad", "turn", "floor"):
        for c in (1, 2, 4, 8, 16, 32):
            b = row(out / f"batched_{model}_c{c}.csv")
            u = row(out / f"unbatched_{model}_c{c}.csv")
            if b is None and u is None:
                continue

            def cells(r: dict[str, float] | None) -> str:
                return "— | — | —" if r is None else f"{r['thr']:.0f} | {r['p50']:.1f} | {r['p99']:.1f}"

            lines.append(f"| {model} | {c} | {cells(b)} | {cells(u)} |")
            if b is not None:
                best[model] = max(best.get(model, 0.0), b["thr"])
    weights = json.loads((ROOT / "model_repository/floor_fusion/1/weights.json").read_text())
    stats = weights.get("stats", {})
    evals_per_s = float(stats.get("full_evals_per_audio_s", stats.get("evals_per_audio_s", 1.0)))
    fusion_per_s = float(stats.get("evals_per_audio_s", evals_per_s)) - evals_per_s
    lines.append("")
    if "vad" in best and "floor" in best:
        # Seconds of this whole machine's time per second of one session's audio.
        cost = VAD_PER_S / best["vad"] + evals_per_s / best["floor"]
        per_20ms = cost * 20.0
        lines.append(
            f"Per session: {VAD_PER_S:.2f} VAD windows/s, {evals_per_s:.2f} full floor evaluations/s and "
            f"{fusion_per_s:.2f} fusion-only re-evaluations/s (~1 ms each, not counted) of audio "
            f"(dev-set replay). At peak throughput (vad {best['vad']:.0f}/s, floor {best['floor']:.1f}/s) one "
            f"session's floor costs {per_20ms:.2f} ms of this machine per 20 ms of audio: an **upper bound, "
            f"extrapolated, of {1 / cost:.0f} real-time sessions** for the floor models alone (not measured; "
            f"ASR, LLM, TTS, face and the orchestrator excluded; `perf/session_load.py` measures real sessions)."
        )
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
