// Every nhl_fast op schema, in one place. Kernels register against these in
// csrc/cpu/<op>_cpu.cpp (CPU) and the glue block of csrc/cuda/<op>_cuda.cu (CUDA), both checking
// their arguments with csrc/checks.h; Python adds fakes and autograd (nhl_fast/_ops.py, named below). The
// pybind11 module reports build facts and controls the cache of large CPU outputs (cpu/output_cache.h).
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/mih_cpu.h"
#include "cpu/output_cache.h"

#ifdef _OPENMP
#include <omp.h>
#endif

TORCH_LIBRARY(nhl_fast, m) {
  // The fakes (and autograd) live in Python, in this module: torch checks they are registered from it, and
  // a fake-tensor call that reaches an op before they are (no `import nhl_fast`) names it in its error.
  m.set_python_module("nhl_fast._ops");

  // --- engine: packed codes (int64 words, LSB-first), nested Hamming, top-k ---
  m.def("pack(Tensor codes) -> Tensor");
  m.def("unpack(Tensor packed, int bits) -> Tensor");
  m.def("hamming(Tensor q, Tensor db, int[] bits) -> Tensor");
  m.def("topk(Tensor q, Tensor db, int k, int[] bits) -> (Tensor, Tensor)");

  // --- layer: nested projection (one GEMM for every code length) and fused sign -> packed encode ---
  // nested_projection returns (u, z): z = x W^T + b, u = relax(z) with relax in {none, tanh, sign_ste}.
  m.def("nested_projection(Tensor x, Tensor weight, Tensor bias, str relax) -> (Tensor, Tensor)");
  m.def("project_and_pack(Tensor x, Tensor weight, Tensor bias) -> Tensor");

  // --- metrics: relevance histograms per distance, index-ordered AP (csrc/*/distance_histogram_*, index_ap_*) ---
  m.def("distance_histogram(Tensor q, Tensor db, Tensor q_labels, Tensor db_labels, int[] bits) -> (Tensor, Tensor)");
  m.def("index_ap(Tensor q, Tensor db, Tensor q_labels, Tensor db_labels, int[] bits, int? topk) -> (Tensor, Tensor)");
  m.def("tie_ap(Tensor tot, Tensor rel, int? topk) -> Tensor");

  // --- objective: cascade distillation value + closed-form gradient, all K-1 pairs (csrc/cpu/cascade_distill_cpu.cpp) ---
  m.def("cascade_distill(Tensor u, int[] bits) -> (Tensor, Tensor)");
  // CSQ's per-length losses and packed closed-form gradients (csrc/cpu/csq_grads_cpu.cpp)
  m.def("csq_grads(Tensor u, Tensor labels, Tensor centers, Tensor tie, int[] bits, float lambda_) -> (Tensor, Tensor)");
  // the objective's whole forward: (total, d total/du, weights, conflicts, dots, distill) (csrc/cpu/nhl_objective_cpu.cpp)
  m.def("nhl_objective(Tensor u, Tensor? grads, Tensor losses, Tensor? x, Tensor? relax_deriv, int[] bits, "
        "float beta, float distill, bool faithful, bool closed_form) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // --- unsupervised: fused SoftSort + SortedNCE of every length (NSH), and its recomputing backward ---
  // losses (K,); backward: (du, dv, dz, dz_anchor) (csrc/cpu/sorted_nce_cpu.cpp, sorted_nce_backward_cpu.cpp)
  m.def("sorted_nce(Tensor u, Tensor v, Tensor z, Tensor z_anchor, int[] bits, int m, float tau, float[] sort_tau, "
        "bool hard) -> Tensor");
  m.def("sorted_nce_backward(Tensor grad, Tensor u, Tensor v, Tensor z, Tensor z_anchor, int[] bits, int m, "
        "float tau, float[] sort_tau, bool hard) -> (Tensor, Tensor, Tensor, Tensor)");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  pybind11::list backends;
  backends.append("cpp");
#ifdef NHL_WITH_CUDA
  backends.append("cuda");
#endif
  info["backends"] = backends;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = std::string("unknown");
#endif
#ifdef _OPENMP
  info["openmp_threads"] = omp_get_max_threads();
#else
  info["openmp_threads"] = 1;
#endif
#if defined(__AVX2__)
  info["simd"] = std::string("avx2");
#elif defined(__POPCNT__)
  info["simd"] = std::string("popcnt");
#else
  info["simd"] = std::string("generic");
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "nhl_fast compiled kernels (ops are registered with torch.library on import)";
  m.def("build_info", &build_info, "Which backends were compiled, compiler, OpenMP threads, SIMD level");
  m.def("empty_output_cache", &nhl::empty_output_cache, "Free the cached blocks of freed large CPU outputs; returns the bytes freed");
  m.def("output_cache_bytes", &nhl::output_cache_bytes, "Bytes of freed large-output blocks the cache holds");
  // multi-index hashing for nhl_fast.MultiIndexHammingIndex (state of one class, not ops: csrc/cpu/mih_cpu.h)
  m.def("mih_build", &nhl::mih_build_cpu, "CSR tables of the substrings of packed codes");
  m.def("mih_search", &nhl::mih_search_cpu, "Exact k nearest codes per length by multi-index hashing");
}
