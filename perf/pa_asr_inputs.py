"""perf_analyzer inputs for `asr` (a real 2.4 s utterance), a no-dynamic-batching repository copy, a server
launcher that loads only `asr`, and the summary table.

    python perf/pa_asr_inputs.py inputs OUT      # OUT/asr_final.json, OUT/asr_partial.json, OUT/repo_unbatched
    python perf/pa_asr_inputs.py serve REPO      # print `grpc_url`, hold until SIGTERM
    python perf/pa_asr_inputs.py summary OUT     # markdown table from the CSVs
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from duet.wav import read_pcm16  # noqa: E402
from orchestrator.config import TritonSettings  # noqa: E402
from orchestrator.models.launcher import EmbeddedTriton  # noqa: E402
from perf.pa_summary import row  # noqa: E402  (one perf_analyzer CSV row reader for every pa_*.sh)

SR = 16000
SCENARIOS = ("final", "partial")  # with word timings (speech-end decode) / text only (streaming partial)
LEVELS = (1, 2, 4, 8)


def inputs(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    audio = np.frombuffer(read_pcm16(ROOT / "perf/data/samples/demo_user.wav"), dtype="<i2").astype(np.int16)
    # "it looks like I was charged twice this month." with 0.2 s around it: a typical 2-3 s utterance.
    utterance = audio[round(2.7467 * SR) : round(5.1717 * SR)]
    for name, words in (("final", True), ("partial", False)):
        data = {
            "AUDIO": {"content": utterance.tolist(), "shape": [utterance.shape[0]]},
            "PROMPT": {"content": ["Hi, I'm calling about my bill,"], "shape": [1]},
            "WORD_TIMESTAMPS": {"content": [words], "shape": [1]},
        }
        (out / f"asr_{name}.json").write_text(json.dumps({"data": [data]}))
    # Only the asr folder, with the weights linked rather than copied (145 MB).
    repo = out / "repo_unbatched"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "asr" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "model_repository/asr/1/model.py", repo / "asr/1/model.py")
    (repo / "asr/1/whisper-base").symlink_to(ROOT / "model_repository/asr/1/whisper-base")
    cfg = (ROOT / "model_repository/asr/config.pbtxt").read_text()
    (repo / "asr/config.pbtxt").write_text(re.sub(r"dynamic_batching \{[^}]*\}\n", "", cfg))


def serve(repository: str) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with EmbeddedTriton(TritonSettings(model_repository=repository, models=("asr",))) as server:
        print(server.grpc_url, flush=True)
        stop.wait()


def summary(out: Path) -> None:
    def cells(r: dict[str, float] | None) -> str:
        return "— | — | —" if r is None else f"{r['thr']:.2f} | {r['p50']:.0f} | {r['p99']:.0f}"

    print("| request | concurrency | batched: infer/s | p50 ms | p99 ms | unbatched: infer/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for scenario in SCENARIOS:
        for c in LEVELS:
            b = row(out / f"batched_{scenario}_c{c}.csv")
            u = row(out / f"unbatched_{scenario}_c{c}.csv")
            if b is not None or u is not None:
                print(f"| {scenario} | {c} | {cells(b)} | {cells(u)} |")


if __name__ == "__main__":
    command, arg = sys.argv[1], sys.argv[2]
    {"inputs": lambda: inputs(Path(arg)), "serve": lambda: serve(arg), "summary": lambda: summary(Path(arg))}[command]()
