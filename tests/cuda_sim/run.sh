#!/usr/bin/env bash
# Runs the torch-free CUDA engine kernels (csrc/cuda/*.cu) on the CPU, with no GPU: every CUDA
# thread is a host thread, warp intrinsics (__ballot_sync, __match_any_sync, __syncwarp) and
# __syncthreads are exchanges/barriers between them (fake/cuda_runtime.h), and transform.py
# rewrites <<<>>> launches and __shared__ arrays. Each kernel file is built in three variants
# that shrink the top-k constants so small inputs hit every path: many database chunks, length
# groups, query batches and the global-memory histogram. Checks against a brute-force reference.
# Slow (hundreds of thousands of host threads), so not part of pytest/ctest: run by hand
#   bash tests/cuda_sim/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$here/../.."
out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT
build() {  # name shared_hist_bytes budget_bytes
  local o="$out/$1"; mkdir -p "$o/cuda"
  python "$here/transform.py" "$root/csrc/cuda/lengths.cuh" "kMaxLengths = 32=>kMaxLengths = 3" > "$o/cuda/lengths.cuh"
  python "$here/transform.py" "$root/csrc/cuda/topk_cuda.cu" "kChunkSteps = 64=>kChunkSteps = 2" \
    "kSharedHistBytes = 48 * 1024=>kSharedHistBytes = $2" "kBudget = size_t(256) << 20=>kBudget = size_t($3)" > "$o/topk.cpp"
  for f in pack unpack hamming; do python "$here/transform.py" "$root/csrc/cuda/${f}_cuda.cu" > "$o/$f.cpp"; done
  local fl=(-include "$here/fake/cuda_runtime.h" -std=c++20 -O1 -pthread -I"$o" -I"$here/fake" -I"$root/csrc")
  for f in topk pack unpack hamming; do g++ "${fl[@]}" -c "$o/$f.cpp" -o "$o/$f.o"; done
  g++ "${fl[@]}" "$here/sim_globals.cpp" "$here/engine_kernels.cpp" "$o"/*.o -o "$o/run"
  echo "== variant $1 (shared histogram <= $2 B, workspace budget $3 B)"; "$o/run"
}
build shared-hist 49152 268435456
build global-hist-one-query-batches 64 4096
build query-batches 49152 40000
