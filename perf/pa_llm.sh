#!/usr/bin/env bash
# perf_analyzer --streaming against the decoupled `llm` model with a realistic chat prompt (a voice persona's
# system prompt, four exchanges and a new user turn: ~310 tokens), max 64 tokens per reply: reply latency
# (perf_analyzer says it times the first response, but its numbers match the whole stream: ~30 tokens here)
# and tokens per second (the model's own duet_llm_generated_tokens_total counter over the run), at
# concurrency 1 and 2, for layouts of 2 CPU cores given as instances:contexts-per-instance:threads-per-context
# (default: the shipped 1:2:1, and 1:1:2). perf_analyzer repeats one prompt, so its KV cache is always warm.
# Then, in-process, the first token of the same prompt cold and with the KV cache of the session's previous
# request (the same history one exchange shorter).
#   bash perf/pa_llm.sh            — results in perf/out/pa_llm/
#   LAYOUTS="1:2:1 2:1:1 1:1:2" bash perf/pa_llm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=perf/out/pa_llm
LAYOUTS=${LAYOUTS:-"1:2:1 1:1:2"}
mkdir -p "$OUT"
source perf/pa_env.sh  # perf_analyzer and the libraries it needs: LIBS, PA

OUT="$OUT" $PY - <<'PYEOF'
import json, os
from pathlib import Path
system = ("You are Ada, a warm and curious voice companion. You speak in short, natural sentences, one or two at "
          "a time, because your words are spoken aloud. You never use lists, markdown or emoji. If you do not know "
          "something, say so plainly. You remember what the user told you earlier in the conversation and refer "
          "back to it when it helps. Keep every answer under forty words.")
turns = [
    ("user", "Hi Ada, I just got back from a long walk by the river."),
    ("assistant", "That sounds lovely. Was it sunny out there, or did you catch some of the rain?"),
    ("user", "It was sunny, but windy. I saw a heron standing completely still in the shallows."),
    ("assistant", "Herons are so patient. They can wait for ages before they strike at a fish."),
    ("user", "Yes! It finally caught something small and silver. Do you know what fish live in rivers here?"),
    ("assistant", "Probably minnows or young trout, depending on the river. Small silver ones are often minnows."),
    ("user", "I think it was a minnow. Anyway, I'm planning to go again tomorrow with my sister."),
    ("assistant", "That will be fun. Does your sister like birds as much as you do?"),
    ("user", "She does, she even has binoculars. What should we bring for a morning by the river?"),
]
messages = [{"role": "system", "content": system}] + [{"role": r, "content": c} for r, c in turns]
out = Path(os.environ["OUT"])
(out / "chat.json").write_text(json.dumps(messages, indent=1))
request = {
    "MESSAGES": {"content": [json.dumps(messages)], "shape": [1]},
    "MAX_TOKENS": {"content": [64], "shape": [1]},
    "TEMPERATURE": {"content": [0.3], "shape": [1]},
    "STOP": {"content": ["[]"], "shape": [1]},
}
(out / "llm.json").write_text(json.dumps({"data": [request]}))
PYEOF

metric() {  # metrics-url -> tokens generated so far, summed over instances
  curl -s "$1" | awk '/^duet_llm_generated_tokens_total\{/ {s += $2} END {print s + 0}'
}

for layout in $LAYOUTS; do
  IFS=: read -r n engines threads <<< "$layout"
  L=i${n}_e${engines}_t${threads}
  # A repository holding only `llm` with this layout (the weights are linked, not copied).
  repo=$OUT/repo_$L
  rm -rf "$repo" && mkdir -p "$repo/llm"
  ln -sfn "$PWD/model_repository/llm/1" "$repo/llm/1"
  sed -e "s/count: [0-9]*/count: $n/" \
      -e "s/\"n_threads\" value: { string_value: \"[0-9]*\" }/\"n_threads\" value: { string_value: \"$threads\" }/" \
      -e "s/\"engines\" value: { string_value: \"[0-9]*\" }/\"engines\" value: { string_value: \"$engines\" }/" \
      model_repository/llm/config.pbtxt > "$repo/llm/config.pbtxt"
  rm -f "$OUT/ports.txt"  # never read the previous layout's ports
  REPO=$repo $PY -c '
import os, signal, threading
from orchestrator.config import TritonSettings
from orchestrator.models.launcher import EmbeddedTriton
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
with EmbeddedTriton(TritonSettings(model_repository=os.environ["REPO"], models=("llm",))) as s:
    print(s.grpc_url, s.metrics_url, flush=True)
    stop.wait()
' > "$OUT/ports.txt" &
  PID=$!
  trap 'kill $PID 2>/dev/null || true' EXIT
  for _ in $(seq 1 600); do [[ -s $OUT/ports.txt ]] && break; sleep 0.2; done
  read -r URL METRICS < "$OUT/ports.txt"
  [[ -n $URL ]] || { echo "triton did not start"; exit 1; }
  for c in 1 2; do
    echo "[pa_llm] $n instance(s) x $engines context(s) x $threads thread(s), concurrency $c"
    t0=$(date +%s.%N); k0=$(metric "$METRICS")
    LD_LIBRARY_PATH=$LIBS $PA -m llm -u "$URL" -i grpc --streaming --input-data "$OUT/llm.json" -b 1 \
      --concurrency-range "$c" --measurement-mode count_windows --measurement-request-count 8 --max-trials 6 -s 50 \
      -f "$OUT/${L}_c${c}.csv" > "$OUT/${L}_c${c}.log" 2>&1 \
      || echo "  (unstable; see $OUT/${L}_c${c}.log)"
    k1=$(metric "$METRICS"); t1=$(date +%s.%N)
    echo "$k0 $k1 $t0 $t1" > "$OUT/${L}_c${c}.tokens"
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true
  trap - EXIT
done

# The summary reads perf_analyzer's logs: on a loaded 2-core machine it often cannot call a run "stable" and
# then writes no CSV, but its last measurement window is still a fair sample (marked "unstable" below).
LAYOUTS="$LAYOUTS" OUT="$OUT" $PY - <<'PYEOF'
import os, re
from pathlib import Path
out = Path(os.environ["OUT"])
print("instances:contexts:threads  concurrency  replies/s  reply p50 ms  p90 ms  tokens/s (all sessions)")
for layout in os.environ["LAYOUTS"].split():
    n, e, t = layout.split(":")
    for c in (1, 2):
        log = (out / f"i{n}_e{e}_t{t}_c{c}.log").read_text()
        got = {k: re.findall(rf"^\s*{k}: ([0-9.]+)", log, re.M) for k in ("Throughput", "p50 latency", "p90 latency")}
        if not all(got.values()):
            print(f"{layout:>26}  {c:>11}  (no measurement; see the log)")
            continue
        k0, k1, t0, t1 = map(float, (out / f"i{n}_e{e}_t{t}_c{c}.tokens").read_text().split())
        p50, p90 = float(got["p50 latency"][-1]) / 1e3, float(got["p90 latency"][-1]) / 1e3
        flag = "" if (out / f"i{n}_e{e}_t{t}_c{c}.csv").exists() else "  (unstable)"
        print(f'{layout:>26}  {c:>11}  {float(got["Throughput"][-1]):>9.2f}  {p50:>12.0f}  {p90:>6.0f}  '
              f"{(k1 - k0) / (t1 - t0):>8.1f}{flag}")
PYEOF

echo "[pa_llm] prefix cache, in-process, 1 thread: first token of the last turn, cold vs after the previous turn"
OUT="$OUT" $PY - <<'PYEOF' | tee "$OUT/prefix.txt"
import json, os, statistics, time
from pathlib import Path
from orchestrator.config import REPO_ROOT
from orchestrator.inference.llm import GenerationStats, LlamaEngine, Message
chat = [Message(m["role"], m["content"]) for m in json.loads((Path(os.environ["OUT"]) / "chat.json").read_text())]
engine = LlamaEngine(REPO_ROOT / "model_repository/llm/1/SmolLM2-135M-Instruct.Q4_1.gguf", n_threads=1)

def first_token(messages):
    stats, t0, first = GenerationStats(), time.perf_counter(), 0.0
    for _ in engine.stream(messages, max_tokens=48, temperature=0.0, stats=stats):
        first = first or time.perf_counter() - t0
    return first, stats, time.perf_counter() - t0

cold, warm, rate = [], [], []
for _ in range(5):
    engine._llama.reset()  # forget the KV cache: the whole prompt is evaluated
    f, st, total = first_token(chat)
    cold.append(f * 1e3)
    rate.append((st.generated_tokens - 1) / (total - f))
    engine._llama.reset()
    first_token(chat[:-2])  # the session's previous request: the same history one exchange shorter
    f, warm_stats, _ = first_token(chat)
    warm.append(f * 1e3)
print(f"prompt {st.prompt_tokens} tokens; {warm_stats.cached_tokens} reused from the previous turn's request")
print(f"first token, cold:   median {statistics.median(cold):6.0f} ms  {[round(x) for x in cold]}")
print(f"first token, cached: median {statistics.median(warm):6.0f} ms  {[round(x) for x in warm]}")
print(f"decode: median {statistics.median(rate):.0f} tokens/s  {[round(x) for x in rate]}")
PYEOF
