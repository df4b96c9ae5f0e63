#!/usr/bin/env bash
# perf_analyzer against `asr` with a real 2.4 s utterance, at rising concurrency, with and without dynamic
# batching; "final" requests ask for word timings (the speech-end decode), "partial" ones for text only (the
# streaming re-decodes). Only `asr` is loaded.
#   bash perf/pa_asr.sh            — results in perf/out/pa_asr/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=perf/out/pa_asr
mkdir -p "$OUT"
source perf/pa_env.sh  # perf_analyzer and the libraries it needs: LIBS, PA
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

$PY perf/pa_asr_inputs.py inputs "$OUT"

run_server() {  # repository -> sets URL, PID
  rm -f "$OUT/url.txt"
  $PY perf/pa_asr_inputs.py serve "$1" > "$OUT/url.txt" &
  PID=$!
  for _ in $(seq 1 600); do [[ -s $OUT/url.txt ]] && break; sleep 0.2; done
  URL=$(cat "$OUT/url.txt")
  [[ -n $URL ]] || { echo "triton did not start"; exit 1; }
}

profile() {  # mode scenario concurrency-list
  local mode=$1 scenario=$2 levels=$3
  for c in $levels; do
    echo "  $mode $scenario concurrency $c"
    # A request takes ~0.1-0.5 s here: count windows of requests rather than short time windows; the
    # stability band is wide because this machine is shared (at 30 % several levels never settled).
    $PA -m asr -u "$URL" -i grpc --input-data "$OUT/asr_$scenario.json" -b 1 \
      --concurrency-range "$c" --measurement-mode count_windows --measurement-request-count $((8 * c)) \
      --max-trials 6 -s 50 \
      -f "$OUT/${mode}_${scenario}_c${c}.csv" > "$OUT/${mode}_${scenario}_c${c}.log" 2>&1 \
      || echo "    (unstable at concurrency $c; see $OUT/${mode}_${scenario}_c${c}.log)"
  done
}

for mode in batched unbatched; do
  repo=model_repository
  [[ $mode == unbatched ]] && repo=$OUT/repo_unbatched
  echo "[pa asr] $mode"
  run_server "$repo"
  trap 'kill $PID 2>/dev/null || true' EXIT
  profile "$mode" final "1 2 4 8"
  [[ $mode == batched ]] && profile "$mode" partial "1 4 8"
  kill "$PID"; wait "$PID" 2>/dev/null || true
  trap - EXIT
done
$PY perf/pa_asr_inputs.py summary "$OUT" | tee "$OUT/summary.md"
