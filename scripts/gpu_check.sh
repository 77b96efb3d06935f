#!/usr/bin/env bash
# One prepared GPU check (<= 10 minutes), one JSON of results: results/gpu_check/gpu_check.json.
#
#   scripts/gpu_check.sh                 # on a machine with a GPU
#   scripts/gpu_check.sh --dry-run       # print the steps, run nothing
#   scripts/gpu_check.sh --device cpu    # the same steps on the CPU with tiny sizes (tests the script)
#
# Steps (each under its own time limit; a failing step is recorded in status.json, the rest still run):
#   1. experiments.bench_llm: Qwen3-0.6B and Qwen3-1.7B built from their config (random weights, no
#      hub), bf16: rollout and update tokens/s, peak memory; MFU is added by the merge step.
#   2. one training stage of a 2-agent tiny team on the device with the exact KL monitor requested
#      (the report's "monitor" field says whether the agents offered it), placement: local.
#   3. the same stage with placement: ray (both agent actors share the GPU, num_gpus 0.5 each).
#   4. vLLM: whether it is installed (the GPU machine lent here has none); if it is, its version.
# Then scripts/gpu_check.py merge writes gpu_check.json.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
DEVICE=cuda
DRY=0
OUT=results/gpu_check
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --device) DEVICE="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$DEVICE" = cpu ]; then  # tiny sizes: checks the script, measures nothing of interest
  BENCH="--presets tiny --device cpu --dtype float32 --batch 2 --prompt-len 8 --new-tokens 4 --repeats 1"
else
  BENCH="--presets 0.6b,1.7b --device $DEVICE --dtype bfloat16 --batch 16 --prompt-len 256 --new-tokens 128 --repeats 2"
fi
STEPS=(
  "bench_llm|240|$PY -m experiments.bench_llm $BENCH --no-progress --out $OUT/bench_llm"
  "stage_local|120|$PY scripts/gpu_check.py stage --device $DEVICE --placement local --out $OUT"
  "stage_ray|150|$PY scripts/gpu_check.py stage --device $DEVICE --placement ray --out $OUT"
  "vllm|240|$PY scripts/vllm_gpu_check.py --device $( [ "$DEVICE" = cpu ] && echo cpu || echo cuda:0 ) --out $OUT"
)
mkdir -p "$OUT"
STATUS="{"
for step in "${STEPS[@]}"; do
  name=${step%%|*}; rest=${step#*|}; limit=${rest%%|*}; cmd=${rest#*|}
  if [ $DRY = 1 ]; then echo "[$name, <= ${limit}s] $cmd"; continue; fi
  echo "== $name (<= ${limit}s)"
  start=$(date +%s)
  timeout "$limit" bash -c "$cmd" > "$OUT/$name.log" 2>&1
  rc=$?
  if [ "$name" = vllm ] && [ $rc != 0 ] && [ ! -s "$OUT/vllm.json" ]; then
    echo "{\"installed\": null, \"note\": \"scripts/vllm_gpu_check.py failed (rc $rc); see vllm.log\"}" > "$OUT/vllm.json"
  fi
  echo "   rc=$rc in $(( $(date +%s) - start ))s (log: $OUT/$name.log)"
  STATUS="$STATUS\"$name\": {\"rc\": $rc, \"seconds\": $(( $(date +%s) - start ))},"
done
[ $DRY = 1 ] && exit 0
echo "${STATUS%,}}" > "$OUT/status.json"
$PY scripts/gpu_check.py merge --out "$OUT"
