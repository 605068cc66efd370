// The argument checks of every op's glue, CPU (csrc/cpu/*_cpu.cpp) and CUDA (csrc/cuda/*_cuda.cu):
// one validator per contract, so a direct torch.ops.nhl_fast.<op> call with bad input raises the
// same exception on every device, as the Python side (nhl_fast/_checks.py) does: TypeError for a
// wrong dtype, ValueError for a wrong shape or value (TORCH_CHECK_TYPE / TORCH_CHECK_VALUE). Each
// message names the op, the argument and what was expected. Devices are the CUDA glue's business
// (cuda/glue.h); the torch-free kernels (kernels/*.h) keep only their own guards.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/relax.h"

namespace nhl {

// Metric ops (distance_histogram, index_ap): codes of at most this many words, at most this many
// lengths (the CPU and CUDA kernels' tables: kApMaxLengths, kWarpMaxLengths).
constexpr int64_t kMetricMaxWords = 64;
constexpr int64_t kMetricMaxLengths = 64;

// ------------------------------------------------------------------ building blocks

inline void check_dtype(const char* op, const char* name, const at::Tensor& t, at::ScalarType want,
                        const char* what) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, op, ": ", name, " must be ", what, ", got ", t.scalar_type());
}

// `t` must have `ref`'s dtype (ref_name names it).
inline void check_same_dtype(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                             const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have ", ref_name, "'s dtype ",
                   ref.scalar_type(), ", got ", t.scalar_type());
}

// dim-D, `shape` describing it: check_dim(op, "q", q, 2, "(Q, W)")
inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim, const char* shape) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must be ", dim, "-D ", shape, ", got shape ", t.sizes());
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape) {
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

// Code lengths: at least one, strictly increasing, each in [1, limit] (limit_name says what limit is).
inline void check_lengths(const char* op, at::IntArrayRef bits, int64_t limit, const char* limit_name) {
  TORCH_CHECK_VALUE(!bits.empty(), op, ": bits must not be empty");
  for (size_t l = 0; l < bits.size(); ++l) {
    TORCH_CHECK_VALUE(bits[l] >= 1 && bits[l] <= limit, op, ": bits=", bits, " must be in [1, ", limit_name, "] = [1, ",
                      limit, "]");
    TORCH_CHECK_VALUE(l == 0 || bits[l] > bits[l - 1], op, ": bits=", bits, " must be strictly increasing");
  }
}

// ------------------------------------------------------------------ packed codes (engine, metrics)

// Real or bool codes to pack: (N, bits) float16/bfloat16/float32/float64/bool.
inline void check_pack_codes(const char* op, const at::Tensor& codes) {
  check_dim(op, "codes", codes, 2, "(N, bits)");
  const at::ScalarType t = codes.scalar_type();
  TORCH_CHECK_TYPE(t == at::kBool || t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble, op,
                   ": codes must be a floating-point (float16, bfloat16, float32, float64) or bool tensor, got ", t);
}

// Packed codes: int64 (N, W) with W >= 1 words.
inline void check_packed(const char* op, const char* name, const at::Tensor& t) {
  check_dtype(op, name, t, at::kLong, "int64 packed codes");
  check_dim(op, name, t, 2, "(N, W)");
  TORCH_CHECK_VALUE(t.size(1) >= 1, op, ": ", name, " must have at least one word, got shape ", t.sizes());
}

// Lengths of codes packed in `words` words: in [1, 64 W], strictly increasing.
inline void check_bits(const char* op, at::IntArrayRef bits, int64_t words) {
  check_lengths(op, bits, 64 * words, "64*W");
}

// Queries and database: packed codes of the same number of words, and the lengths to compare.
inline void check_query_database(const char* op, const at::Tensor& q, const at::Tensor& db, at::IntArrayRef bits) {
  check_packed(op, "q", q);
  check_packed(op, "db", db);
  TORCH_CHECK_VALUE(q.size(1) == db.size(1), op, ": q and db must have the same number of words, got q ", q.sizes(),
                    " and db ", db.sizes());
  check_bits(op, bits, q.size(1));
}

// k (or topk) nearest of n database codes: in [1, N].
inline void check_k(const char* op, const char* name, int64_t k, int64_t n) {
  TORCH_CHECK_VALUE(k >= 1 && k <= n, op, ": ", name, "=", k, " must be in [1, N] with N=", n, " database codes");
}

// Labels of queries and database: int64, both 1-D class indices or both 2-D packed multi-hot words
// (the same number, >= 1), one row per code.
inline void check_labels(const char* op, const at::Tensor& q_labels, const at::Tensor& db_labels, int64_t nq,
                         int64_t ndb) {
  const char* what = "int64 (class indices or packed multi-hot words)";
  check_dtype(op, "q_labels", q_labels, at::kLong, what);
  check_dtype(op, "db_labels", db_labels, at::kLong, what);
  TORCH_CHECK_VALUE(q_labels.dim() == 1 || q_labels.dim() == 2, op,
                    ": q_labels must be 1-D (Q,) class indices or 2-D (Q, words) packed multi-hot labels, got shape ",
                    q_labels.sizes());
  TORCH_CHECK_VALUE(db_labels.dim() == q_labels.dim(), op, ": db_labels must be ", q_labels.dim(),
                    "-D like q_labels (one kind of labels), got shape ", db_labels.sizes());
  TORCH_CHECK_VALUE(q_labels.size(0) == nq, op, ": q_labels must have one row per query (Q=", nq, "), got shape ",
                    q_labels.sizes());
  TORCH_CHECK_VALUE(db_labels.size(0) == ndb, op, ": db_labels must have one row per database code (N=", ndb,
                    "), got shape ", db_labels.sizes());
  TORCH_CHECK_VALUE(q_labels.dim() == 1 || (q_labels.size(1) >= 1 && db_labels.size(1) == q_labels.size(1)), op,
                    ": q_labels and db_labels must have the same number (>= 1) of label words, got ", q_labels.sizes(),
                    " and ", db_labels.sizes());
}

// distance_histogram, index_ap: codes, labels and lengths within the kernels' limits.
inline void check_metric_inputs(const char* op, const at::Tensor& q, const at::Tensor& db, const at::Tensor& q_labels,
                                const at::Tensor& db_labels, at::IntArrayRef bits) {
  check_query_database(op, q, db, bits);
  TORCH_CHECK_VALUE(q.size(1) <= kMetricMaxWords, op, ": q and db must have at most ", kMetricMaxWords,
                    " words (codes of up to ", 64 * kMetricMaxWords, " bits), got W=", q.size(1));
  check_labels(op, q_labels, db_labels, q.size(0), db.size(0));
  TORCH_CHECK_VALUE(db.size(0) >= 1 && db.size(0) < (int64_t(1) << 32), op,
                    ": db must hold 1 to 2^32-1 codes, got N=", db.size(0));
  TORCH_CHECK_VALUE(int64_t(bits.size()) <= kMetricMaxLengths, op, ": bits must hold at most ", kMetricMaxLengths,
                    " code lengths, got ", bits.size());
}

// tie_ap: (L, Q, B) int64 histograms of all / relevant items, one shape.
inline void check_histograms(const char* op, const at::Tensor& tot, const at::Tensor& rel) {
  check_dtype(op, "tot", tot, at::kLong, "int64 counts");
  check_dtype(op, "rel", rel, at::kLong, "int64 counts");
  check_dim(op, "tot", tot, 3, "(L, Q, B)");
  check_shape(op, "rel", rel, tot.sizes());
}

// ------------------------------------------------------------------ nested hash layer

// x (B, in) W^T (b_max, in) + b (b_max,): one floating dtype.
inline void check_projection_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& bias) {
  check_dim(op, "x", x, 2, "(B, in_features)");
  check_dim(op, "weight", weight, 2, "(b_max, in_features)");
  check_dim(op, "bias", bias, 1, "(b_max,)");
  TORCH_CHECK_VALUE(x.size(1) == weight.size(1), op, ": x has ", x.size(1), " features, weight expects ",
                    weight.size(1), " (in_features)");
  TORCH_CHECK_VALUE(bias.size(0) == weight.size(0), op, ": bias must have b_max=", weight.size(0),
                    " entries (weight's rows), got ", bias.size(0));
  const at::ScalarType t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble, op,
                   ": x must be float16, bfloat16, float32 or float64, got ", t);
  check_same_dtype(op, "weight", weight, "x", x);
  check_same_dtype(op, "bias", bias, "x", x);
}

inline Relax check_relax(const char* op, c10::string_view relax) {
  const int r = parse_relax(relax.data(), relax.size());
  TORCH_CHECK_VALUE(r >= 0, op, ": relax must be one of none, tanh, sign_ste, got '", std::string(relax), "'");
  return static_cast<Relax>(r);
}

// ------------------------------------------------------------------ objective (relaxed codes u)

// u (B, b_max) float32/float64 and bits strictly increasing, >= 1, ending at b_max. Returns the packed
// column layout: length k's segment starts at offset[k] (K + 1 entries, offset[K] = sum b_k).
inline std::vector<int64_t> check_codes(const char* op, const at::Tensor& u, at::IntArrayRef bits) {
  check_dim(op, "u", u, 2, "(B, b_max)");
  TORCH_CHECK_TYPE(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble, op,
                   ": u must be float32 or float64, got ", u.scalar_type());
  check_lengths(op, bits, u.size(1), "b_max");
  TORCH_CHECK_VALUE(bits.back() == u.size(1), op, ": bits=", bits, " must end at u's width b_max=", u.size(1));
  std::vector<int64_t> offset(bits.size() + 1, 0);
  for (size_t k = 0; k < bits.size(); ++k) offset[k + 1] = offset[k] + bits[k];
  return offset;
}

// ------------------------------------------------------------------ unsupervised: sorted_nce, sorted_nce_backward

// u (B, b_max) anchors' and v (N, b_max) candidates' relaxed codes (bits ending at b_max), z (N, d) candidates'
// and z_anchor (B, d) anchors' latents, all one float dtype; B >= 1, N >= 2, m positives in [1, N - 1], tau > 0,
// one SoftSort temperature > 0 per length.
inline void check_sorted_nce(const char* op, const at::Tensor& u, const at::Tensor& v, const at::Tensor& z,
                             const at::Tensor& z_anchor, at::IntArrayRef bits, int64_t m, double tau,
                             at::ArrayRef<double> sort_tau) {
  check_codes(op, u, bits);
  check_same_dtype(op, "v", v, "u", u);
  TORCH_CHECK_VALUE(v.dim() == 2 && v.size(1) == u.size(1), op, ": v must be (N, b_max) with b_max = ", u.size(1),
                    " (u's width), got ", v.sizes());
  check_dim(op, "z", z, 2, "(N, d)");
  check_same_dtype(op, "z", z, "u", u);
  TORCH_CHECK_VALUE(z.size(0) == v.size(0) && z.size(1) >= 1, op, ": z must be (N, d) with N = ", v.size(0),
                    " (v's rows) and d >= 1, got ", z.sizes());
  check_same_dtype(op, "z_anchor", z_anchor, "u", u);
  TORCH_CHECK_VALUE(z_anchor.dim() == 2 && z_anchor.size(0) == u.size(0) && z_anchor.size(1) == z.size(1), op,
                    ": z_anchor must be (B, d) = (", u.size(0), ", ", z.size(1), ") (u's rows, z's width), got ",
                    z_anchor.sizes());
  TORCH_CHECK_VALUE(u.size(0) >= 1, op, ": needs B >= 1 anchors, got B = ", u.size(0));
  TORCH_CHECK_VALUE(v.size(0) >= 2, op, ": needs N >= 2 candidates, got N = ", v.size(0));
  TORCH_CHECK_VALUE(m >= 1 && m < v.size(0), op, ": m=", m, " positives must be in [1, N - 1] = [1, ", v.size(0) - 1,
                    "]");
  TORCH_CHECK_VALUE(tau > 0 && tau < INFINITY, op, ": tau=", tau, " must be a finite number > 0");
  TORCH_CHECK_VALUE(sort_tau.size() == bits.size(), op, ": sort_tau must have one value per length (",
                    bits.size(), "), got ", sort_tau.size());
  for (double t : sort_tau)
    TORCH_CHECK_VALUE(t > 0 && t < INFINITY, op, ": sort_tau=", sort_tau, " must be finite numbers > 0");
}

}  // namespace nhl
