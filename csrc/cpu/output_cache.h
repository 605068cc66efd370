// Large CPU op outputs (topk's (L, Q, k), hamming's (L, Q, N)) from a small cache of blocks that
// earlier outputs freed.
//
// Why: torch's CPU allocator hands blocks of more than 32 MiB straight back to the kernel, so
// every call's output is fresh memory and its first write costs one page fault per 4 KiB (and a
// zeroing): 60 MB of 5-length top-k results took ~25 ms to touch on the 2-core machine, as long
// as the whole 128-bit call. Huge pages (MADV_HUGEPAGE) cut that on bare metal, but on the VMs
// here a freed huge page goes back to the host and the next one faults there: 130 ms for the
// same 60 MB. Reusing the blocks of freed outputs costs nothing per call after the first.
//
// The cache holds at most NHL_OUTPUT_CACHE_MB MiB (default 512; 0 turns it off) of freed blocks
// of at least 1 MiB; nhl_fast.empty_cache() hands them back. The tensors are ordinary CPU
// tensors (resizable storage, any dtype) whose storage returns its block to the cache.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace nhl {

// at::empty(sizes, dtype) on CPU, from the cache when the output is large.
at::Tensor cached_empty(at::IntArrayRef sizes, at::ScalarType dtype);

// Free every cached block; returns the bytes freed.
int64_t empty_output_cache();

// Bytes of freed blocks the cache holds now.
int64_t output_cache_bytes();

}  // namespace nhl
