#!/usr/bin/env bash
# perf_analyzer against `perception_audio` (3 hops of speech per request, as a session sends every 60 ms) and
# `perception_face` (one 640x480 JPEG per request) at rising concurrency: the many-sessions case, with the
# models' dynamic batching. Only those two models are loaded.
#   bash perf/pa_perception.sh     — results in perf/out/pa_perception/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=perf/out/pa_perception
mkdir -p "$OUT"
source perf/pa_env.sh  # perf_analyzer and the libraries it needs: LIBS, PA
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

$PY perf/pa_perception_inputs.py inputs "$OUT"
rm -f "$OUT/url.txt"
$PY perf/pa_perception_inputs.py serve > "$OUT/url.txt" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do [[ -s $OUT/url.txt ]] && break; sleep 0.2; done
URL=$(cat "$OUT/url.txt")
[[ -n $URL ]] || { echo "triton did not start"; exit 1; }

for model in perception_audio perception_face; do
  input=$OUT/audio.json
  [[ $model == perception_face ]] && input=$OUT/face.json
  for c in 1 4 8 16; do
    echo "[pa perception] $model concurrency $c"
    $PA -m "$model" -u "$URL" -i grpc --input-data "$input" -b 1 --concurrency-range "$c" \
      --measurement-mode count_windows --measurement-request-count $((20 * c)) --max-trials 6 -s 50 \
      -f "$OUT/${model}_c${c}.csv" > "$OUT/${model}_c${c}.log" 2>&1 \
      || echo "    (unstable at concurrency $c; see $OUT/${model}_c${c}.log)"
  done
done
kill "$PID"; wait "$PID" 2>/dev/null || true
trap - EXIT
$PY perf/pa_perception_inputs.py summary "$OUT" | tee "$OUT/summary.md"
