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
SP=$($PY -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')

# perf_analyzer (in the tritonclient wheel) needs libb64 and libcudart: link the server wheel's copies.
LIBS=$PWD/.cache/palibs
mkdir -p "$LIBS"
ln -sfn "$(ls "$SP"/nvidia_pytriton.libs/libb64-*.so.0d | head -n1)" "$LIBS/libb64.so.0d"
ln -sfn "$(ls "$SP"/nvidia_pytriton.libs/libcudart-*.so.12* | head -n1)" "$LIBS/libcudart.so.12"
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
PA=.venv/bin/perf_analyzer
$PA --version >/dev/null 2>&1 || { echo "perf_analyzer cannot start: $($PA --version 2>&1 | tail -1)"; exit 1; }

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
