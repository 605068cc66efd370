#!/usr/bin/env bash
# Runs every torch-free CUDA kernel of csrc/cuda/*.cu on the CPU, with no GPU, and checks it
# against a brute-force reference written in plain loops in the drivers:
#   engine_kernels.cpp  pack, unpack, hamming, topk; built in three variants that shrink the topk
#                       constants so small inputs hit every path (many database chunks, length
#                       groups, query batches, the global-memory histogram)
#   metric_kernels.cpp  index_ap, distance_histogram (shared-memory and global-scratch paths)
#   layer_kernels.cpp   nested_projection and project_and_pack epilogues (float, double)
# fake/cuda_runtime.h simulates the CUDA subset they use (CUDA threads as fibers, warp collectives
# and __syncthreads as exchanges/barriers between them); transform.py rewrites <<<>>> launches and
# dynamic shared memory. The .cu files compile with -DNHL_KERNELS_ONLY: kernels and launchers only,
# without their torch glue blocks. Needs g++ (C++20) and python.
#   bash tests/cuda_sim/run.sh [--quick]
# Prints "N passed, 0 failed" last (N: checks over all drivers); exits non-zero on any failure.
# SIM_SEED=n varies the order in which the simulated threads run; SIM_WORKERS=n the host threads.
set -euo pipefail
quick=(); mode=""
case "${1:-}" in
  "") ;;
  --quick) quick=(--quick); mode=" (--quick)" ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "$0")" && pwd)"; root="$(cd "$here/../.." && pwd)"
out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT
start=$SECONDS
py="$(command -v python3 || command -v python)"
fl=(-include "$here/fake/cuda_runtime.h" -std=c++20 -O1 -pthread -DNHL_KERNELS_ONLY -I"$here" -I"$here/fake" -I"$root/csrc")

# Compiles run in the background, at most nproc at a time; wait_all fails if any of them did.
max_jobs="$(nproc 2>/dev/null || echo 2)"
bg() {
  while (( $(jobs -rp | wc -l) >= max_jobs )); do wait -n || true; done
  { "$@" || touch "$out/build-failed"; } &
}
wait_all() { wait; [[ ! -e "$out/build-failed" ]] || { echo "== build failed"; echo "0 passed, 1 failed"; exit 1; }; }
# cu SRC OBJ [-Iinclude-dir] [OLD=>NEW ...]: transform csrc/cuda/SRC and compile it to OBJ.
cu() {
  local src="$1" obj="$2"; shift 2
  local inc=(); if [[ "${1:-}" == -I* ]]; then inc=("$1"); shift; fi
  "$py" "$here/transform.py" "$root/csrc/cuda/$src" "$@" > "${obj%.o}.cpp"
  g++ "${inc[@]}" "${fl[@]}" -c "${obj%.o}.cpp" -o "$obj"
}

echo "== build"
# engine: kMaxLengths 3 (length groups); topk chunks of 64 codes and a 64-code sample for the
# d* bound (pass 0 runs when N > 2 max(k, 64)); per variant the shared histogram limit and the
# workspace budget (bytes): shared histograms | global histograms, one query per batch | shared
# histograms, several batches.
variants=("shared-hist 49152 268435456" "global-hist-one-query-batches 64 4096" "query-batches 49152 40000")
mkdir -p "$out/small/cuda"
"$py" "$here/transform.py" "$root/csrc/cuda/lengths.cuh" "kMaxLengths = 32=>kMaxLengths = 3" > "$out/small/cuda/lengths.cuh"
for f in pack unpack hamming; do bg cu "${f}_cuda.cu" "$out/small/$f.o" -I"$out/small"; done
for v in "${variants[@]}"; do
  read -r name hist budget <<< "$v"
  bg cu topk_cuda.cu "$out/small/topk-$name.o" -I"$out/small" "kChunkSteps = 64=>kChunkSteps = 2" "kSample = 65536=>kSample = 64" \
    "kSharedHistBytes = 48 * 1024=>kSharedHistBytes = $hist" "kBudget = size_t(256) << 20=>kBudget = size_t($budget)"
done
bg g++ "${fl[@]}" -c "$here/engine_kernels.cpp" -o "$out/engine_kernels.o"
# metrics and layer epilogues: the sources as they are
for f in index_ap distance_histogram nested_projection project_and_pack; do bg cu "${f}_cuda.cu" "$out/$f.o"; done
for d in metric_kernels layer_kernels; do bg g++ "${fl[@]}" -c "$here/$d.cpp" -o "$out/$d.o"; done
wait_all
for v in "${variants[@]}"; do
  read -r name _ <<< "$v"
  g++ -pthread "$out/engine_kernels.o" "$out"/small/{pack,unpack,hamming,topk-$name}.o -o "$out/engine-$name"
done
g++ -pthread "$out/metric_kernels.o" "$out"/{index_ap,distance_histogram}.o -o "$out/metrics"
g++ -pthread "$out/layer_kernels.o" "$out"/{nested_projection,project_and_pack}.o -o "$out/layer"
echo "   built in $((SECONDS - start)) s"

passed=0; failed=0
limit=(); if command -v timeout > /dev/null; then limit=(timeout 600); fi  # a hang fails (deadlocks abort by themselves)
run() {  # NAME BINARY: runs a driver, adds its "checks: P passed, F failed" line (a crash is a failure)
  local t=$SECONDS rc=0
  echo "== $1"
  "${limit[@]}" "$2" "${quick[@]}" > "$out/log" 2>&1 || rc=$?
  cat "$out/log"
  local line; line="$(grep -E 'checks: [0-9]+ passed, [0-9]+ failed$' "$out/log" | tail -n 1 || true)"
  if [[ -z "$line" ]]; then
    echo "   FAILED: $1 exited with status $rc before its summary"; failed=$((failed + 1)); return
  fi
  read -r p f <<< "$(sed -E 's/.*checks: ([0-9]+) passed, ([0-9]+) failed$/\1 \2/' <<< "$line")"
  passed=$((passed + p)); failed=$((failed + f))
  if (( rc != 0 && f == 0 )); then echo "   FAILED: $1 exited with status $rc"; failed=$((failed + 1)); fi
  echo "   ($((SECONDS - t)) s)"
}
for v in "${variants[@]}"; do read -r name _ <<< "$v"; run "engine, topk variant $name" "$out/engine-$name"; done
run "metrics: index_ap, distance_histogram" "$out/metrics"
run "layer: nested_projection, project_and_pack epilogues" "$out/layer"
echo "== total $((SECONDS - start)) s$mode"
echo "$passed passed, $failed failed"
(( failed == 0 ))
