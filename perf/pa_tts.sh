#!/usr/bin/env bash
# perf_analyzer --streaming against the decoupled `tts` model with a typical first reply clause: time to the
# first chunk (perf_analyzer times the first response of each request) and the real-time factor (that time
# over the clause's audio length), at concurrency 1 and 2, with 1 and with 2 model instances.
#   bash perf/pa_tts.sh ["clause text"]      — results in perf/out/pa_tts/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=perf/out/pa_tts
CLAUSE=${1:-"Sure, I can help you with that."}
mkdir -p "$OUT"
source perf/pa_env.sh  # perf_analyzer and the libraries it needs: LIBS, PA

# Input, and the clause's audio length (synthesis is deterministic, so this is what the server makes).
CLAUSE="$CLAUSE" OUT="$OUT" $PY - <<'EOF'
import json, os
from pathlib import Path
from orchestrator.config import REPO_ROOT, TtsSettings
from orchestrator.inference.tts import VoiceLibrary
out, clause = Path(os.environ["OUT"]), os.environ["CLAUSE"]
(out / "tts.json").write_text(json.dumps({"data": [{"TEXT": {"content": [clause], "shape": [1]}}]}))
spoken = VoiceLibrary(REPO_ROOT / "model_repository/tts/1/voices", TtsSettings().voice).get().synthesize(clause)
(out / "clause.json").write_text(json.dumps({"text": clause, "chars": len(clause), "audio_s": spoken.duration}))
EOF

for n in 1 2; do
  # A repository holding only `tts`, with n instances (the weights are linked, not copied).
  repo=$OUT/repo_i$n
  rm -rf "$repo" && mkdir -p "$repo/tts"
  ln -sfn "$PWD/model_repository/tts/1" "$repo/tts/1"
  sed "s/count: [0-9]*/count: $n/" model_repository/tts/config.pbtxt > "$repo/tts/config.pbtxt"
  REPO=$repo $PY -c '
import os, signal, threading
from orchestrator.config import TritonSettings
from orchestrator.models.launcher import EmbeddedTriton
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
with EmbeddedTriton(TritonSettings(model_repository=os.environ["REPO"], models=("tts",))) as s:
    print(s.grpc_url, flush=True)
    stop.wait()
' > "$OUT/url_i$n.txt" &
  PID=$!
  trap 'kill $PID 2>/dev/null || true' EXIT
  for _ in $(seq 1 600); do [[ -s $OUT/url_i$n.txt ]] && break; sleep 0.2; done
  URL=$(head -n1 "$OUT/url_i$n.txt")
  [[ -n $URL ]] || { echo "triton did not start"; exit 1; }
  for c in 1 2; do
    echo "[pa_tts] instances $n concurrency $c"
    LD_LIBRARY_PATH=$LIBS $PA -m tts -u "$URL" -i grpc --streaming --input-data "$OUT/tts.json" -b 1 \
      --concurrency-range "$c" --measurement-mode count_windows --measurement-request-count 12 \
      --max-trials 6 -s 50 \
      -f "$OUT/i${n}_c${c}.csv" > "$OUT/i${n}_c${c}.log" 2>&1 \
      || echo "  (unstable; see $OUT/i${n}_c${c}.log)"
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true
  trap - EXIT
done

OUT="$OUT" $PY - <<'EOF'
import csv, json, os
from pathlib import Path
out = Path(os.environ["OUT"])
clause = json.loads((out / "clause.json").read_text())
print(f'clause: "{clause["text"]}" ({clause["chars"]} chars, {clause["audio_s"]:.2f} s of audio)')
print("instances  concurrency  clauses/s  first-chunk p50 ms  p90 ms  RTF(p50)")
for n in (1, 2):
    for c in (1, 2):
        f = out / f"i{n}_c{c}.csv"
        if not f.exists():
            print(f"{n:>9}  {c:>11}  (no result)")
            continue
        row = next(csv.DictReader(f.open()))
        p50, p90 = float(row["p50 latency"]) / 1e3, float(row["p90 latency"]) / 1e3
        print(f'{n:>9}  {c:>11}  {float(row["Inferences/Second"]):>9.2f}  {p50:>18.0f}  {p90:>6.0f}  '
              f'{p50 / 1e3 / clause["audio_s"]:>8.2f}')
EOF
