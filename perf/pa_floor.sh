#!/usr/bin/env bash
# perf_analyzer against vad, turn and the floor ensemble at rising concurrency, with and without dynamic
# batching (a copy of the repository with the dynamic_batching blocks removed), then a summary of what
# batching buys and how many real-time sessions this machine could hold.
#   bash perf/pa_floor.sh            (make bench-pa)   — results in perf/out/pa/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=perf/out/pa
mkdir -p "$OUT"
source perf/pa_env.sh  # perf_analyzer and the libraries it needs: LIBS, PA
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

$PY perf/pa_inputs.py "$OUT"   # real speech inputs + the no-batching repository copy

run_server() {  # repository -> sets URL, PID
  $PY perf/triton_up.py --repository "$1" > "$OUT/ports.txt" &
  PID=$!
  for _ in $(seq 1 600); do [[ -s $OUT/ports.txt ]] && break; sleep 0.2; done
  URL=$(cut -d' ' -f1 "$OUT/ports.txt")
  [[ -n $URL ]] || { echo "triton did not start"; exit 1; }
}

profile() {  # label model concurrency-list
  local label=$1 model=$2 levels=$3
  for c in $levels; do
    echo "  $label $model concurrency $c"
    $PA -m "$model" -u "$URL" -i grpc --input-data "$OUT/$model.json" -b 1 \
      --concurrency-range "$c" --measurement-interval 2500 --max-trials 5 -s 25 \
      -f "$OUT/${label}_${model}_c${c}.csv" > "$OUT/${label}_${model}_c${c}.log" 2>&1 \
      || echo "    (unstable at concurrency $c; see $OUT/${label}_${model}_c${c}.log)"
  done
}

for mode in batched unbatched; do
  repo=model_repository
  [[ $mode == unbatched ]] && repo=$OUT/repo_unbatched
  echo "[pa] $mode"
  run_server "$repo"
  trap 'kill $PID 2>/dev/null || true' EXIT
  profile "$mode" vad "1 2 4 8 16 32"
  profile "$mode" turn "1 2 4 8"
  profile "$mode" floor "1 2 4 8"
  kill "$PID"; wait "$PID" 2>/dev/null || true
  trap - EXIT
done
$PY perf/pa_summary.py "$OUT"
