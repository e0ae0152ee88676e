#!/usr/bin/env bash
# The prepared device check of the GPU-fast trainer: about 5 minutes on one GPU. From the repository root,
# with dfqbench importable and the offline options set if there is no internet (DFQBENCH_WEIGHTS,
# DFQBENCH_WEIGHTS_NORM, DFQBENCH_DATA):
#
#     OUT=gpu_check_out bash benchmarks/gpu_check.sh
#
# 1. check_engines: fused fake-quant bit-exact on the GPU; CUDA-graph replay equal to the uncaptured step.
# 2. count_ops: ATen operations (kernel launches) per eager iteration, and those the fused quantizers replace;
#    bench_step: ms/iteration per method (paper batch, resnet20_cifar10), FP and W3A3 student, eager vs compiled;
#    bench_direct: the same for IntraQ, HAST and SynQ (a random bank stands in) and bench_synthesis's step.
# 3. bench_packed: AdaSG W3A3 iterations/s with 1, 2, 4, 8 processes on the GPU (compiled engine).
# 4. quick runs: every method, eager and compiled (7 runs packed on the GPU at once, --runs-per-gpu 7).
# 5. paper_adasg: the paper-protocol AdaSG W3A3 run for PAPER_SECONDS (default 120), its iterations/s.
# Each part has its own time limit and log in $OUT; a failing part does not stop the others. PARTS="check bench"
# runs a subset (e.g. to split the check over two sessions of a time-limited machine).
set -uo pipefail
OUT=${OUT:-gpu_check_out}
PAPER_SECONDS=${PAPER_SECONDS:-120}
PARTS=${PARTS:-check bench packed quick paper}  # a subset runs only those parts
ITERS=${ITERS:-30}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

part() {  # part NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.log, show its tail
  local name=$1 limit=$2 start
  shift 2
  start=$(date +%s)
  echo "== $name (limit ${limit} s)"
  timeout -s INT -k 15 "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "   exit $? after $(($(date +%s) - start)) s"
  grep -v '^\s*$' "$OUT/$name.log" | grep -iv 'warn' | tail -n "${TAIL:-25}"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

want() { [[ " $PARTS " == *" $1 "* ]]; }

want check && CUBLAS_WORKSPACE_CONFIG=:4096:8 part check_engines 110 python benchmarks/check_engines.py --iters 5 \
  --methods "${CHECK_METHODS:-gdfq,qimera,adasg,zaq,zeroq_kd,intraq,hast,synq}"
want bench && part count_ops 60 python benchmarks/count_ops.py --device cuda --methods gdfq,adasg
want bench && part bench_step 150 python benchmarks/bench_step.py --iters "$ITERS" --warmup 5 --json "$OUT/bench_step.jsonl"
want bench && part bench_direct 120 python benchmarks/bench_step.py --methods intraq,hast,synq --iters "$ITERS" \
  --warmup 5 --json "$OUT/bench_direct.jsonl"
want bench && part bench_synthesis 60 python benchmarks/bench_synthesis.py --device cuda --only step --iters 10
want packed && OMP_NUM_THREADS=1 part bench_packed 100 python benchmarks/bench_step.py --methods "" --packed 1,2,4,8 \
  --packed-method adasg --iters 150 --warmup 5 --json "$OUT/bench_packed.jsonl"
if want quick; then
  for engine in eager compiled; do
    OMP_NUM_THREADS=2 TAIL=12 part "quick_$engine" 90 dfqbench run --grid benchmarks/gpu_check.yaml --engine "$engine" \
      --runs-per-gpu 7 --results "$OUT/quick_$engine"
  done
fi
want paper && part paper_adasg $((PAPER_SECONDS + 30)) timeout -s INT "$PAPER_SECONDS" dfqbench run --method adasg \
  --model resnet20_cifar10 --bits w3a3 --protocol paper --engine compiled --plain --results "$OUT/paper_adasg"
python benchmarks/summarize_gpu_check.py "$OUT" | tee "$OUT/summary.md"
