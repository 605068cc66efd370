#!/usr/bin/env bash
# The GPU check in one command: build the CUDA extension, print the op x backend table, run one
# small instance of every kernel against the reference, the CUDA tests (pytest -m cuda: the CUDA
# and Triton-on-CUDA parametrisations) while compute-sanitizer's memcheck and racecheck run that
# small instance, then the GPU microbenchmarks alone on the card (bench/bench_gpu.py). About
# 7 minutes on an H200. The logs and bench/results/gpu_*.json are bundled into
# $OUT/gpu_check.tar after every step (default OUT: bench/results/gpu_check/, ignored by git), and
# $OUT/summary.txt has each step's exit code and time.
#
#   bash bench/gpu_check.sh              # on a GPU machine (builds there: TORCH_CUDA_ARCH_LIST, MAX_JOBS)
#   bash bench/gpu_check.sh --dry-run    # the same steps on the CPU (tiny sizes, Triton interpreter,
#                                        # no build, no sanitizer): .ci/run calls this so it cannot rot
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0; [ "${1:-}" = "--dry-run" ] && dry=1
OUT="${OUT:-bench/results/gpu_check}"; mkdir -p "$OUT"
LOGS="$(mktemp -d)"; trap 'rm -rf "$LOGS"' EXIT
summary="$LOGS/summary.txt"; : > "$summary"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"

step() {  # name timeout_s command...: runs it, logs to $LOGS/<name>.log, records the exit code
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  printf '%-22s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$summary"
  cp "$summary" "$OUT/summary.txt"
  tar cf "$OUT/.gpu_check.$BASHPID" $(ls bench/results/gpu_*.json 2>/dev/null) -C "$LOGS" . 2>/dev/null &&
    mv "$OUT/.gpu_check.$BASHPID" "$OUT/gpu_check.tar"  # steps run in parallel: never a half-written tar
  return $rc
}

if [ $dry = 1 ]; then
  export TRITON_INTERPRET=1
  step build_info 60 "$py" -c "import nhl_fast; print(nhl_fast.build_info())"
  step kernels_cpp 120 "$py" bench/gpu_kernels_once.py --backend cpp --device cpu
  step kernels_triton 300 "$py" bench/gpu_kernels_once.py --backend triton --device cpu
  step pytest_collect 120 "$py" -m pytest -q -m cuda --collect-only -p no:cacheprovider
  step bench_dry_run 300 "$py" bench/bench_gpu.py --dry-run
  cat "$LOGS"/kernels_*.log "$LOGS"/bench_dry_run.log | grep -E "FAIL|Error" && exit 1
  ! grep -v " rc=0 " "$summary"   # every step passed
  exit $?
fi

nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,driver_version --format=csv > "$LOGS/nvidia_smi.txt" 2>&1
step build 300 env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" \
  "$py" -m pip install --no-build-isolation --no-deps -e . || { tail -n 60 "$LOGS/build.log"; exit 1; }
step build_info 60 "$py" -c "import nhl_fast; print(nhl_fast.build_info())"
cat "$LOGS/build_info.log"
# correctness, in parallel (the card has room); the benchmarks run alone afterwards
san="compute-sanitizer --print-limit 20 --error-exitcode 3"
( step kernels_cuda 120 "$py" bench/gpu_kernels_once.py --backend cuda
  step memcheck 200 $san --tool memcheck "$py" bench/gpu_kernels_once.py --backend cuda
  step racecheck 200 $san --tool racecheck "$py" bench/gpu_kernels_once.py --backend cuda ) &
( step kernels_triton 180 "$py" bench/gpu_kernels_once.py --backend triton ) &
step pytest_cuda 240 "$py" -m pytest -q -m cuda -p no:cacheprovider --timeout 120 -n 8
wait
grep -h -E "FAIL|triton .*spills" "$LOGS"/kernels_*.log
tail -n 30 "$LOGS/pytest_cuda.log"
grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|========= (Invalid|Race|Error)" "$LOGS"/memcheck.log "$LOGS"/racecheck.log | head -20

step bench "${BENCH_LIMIT:-230}" "$py" bench/bench_gpu.py --budget "${BENCH_BUDGET:-150}" --box 4
cat "$LOGS/bench.log"
echo "== summary"; cat "$summary"
