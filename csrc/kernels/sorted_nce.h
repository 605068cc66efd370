// The per-anchor core of the fused soft-sort + SortedNCE op (spec: nhl_fast/reference.py sorted_nce), torch-free.
//
// For anchor i of one code length (distances D_i. in [0, 1], SoftSort temperature tau_s):
//   q = sort(D_i.) ascending (stable), Pt_rj = softmax_j(-|q_r - D_ij| / tau_s), P = Pt (soft) or the one-hot of
//   argmax_j (first index, straight-through) (hard); e_r = sum_j P_rj z_j, c_r = <e_r, a_i> / (|e_r| |a_i|),
//   l_i = (1/m) sum_{r<m} [lae(x_r, neg) - x_r], x = c / tau, neg = logsumexp_{r>=m} x_r.
// Nothing B x B x B or B x B x d exists: every latent product goes through the B x B Grams
//   gz = z z^T, mt = a z^T  (built once by the glue),
// so the hard variant reads <e_r, a_i> = mt[i, j*], |e_r|^2 = gz[j*, j*] and <e_r, z_j> = gz[j*, j] (O(1) each),
// and the soft one forms one anchor's B x w block at a time: E = Pt z (w = d, "direct") or Y = Pt gz (w = B,
// "gram", cheaper when d > B). Each SoftSort row's largest logit is exactly 0 (q_r is one of the D_ij), so its
// softmax needs no running max: every exponent is <= 0 and the row sum is >= 1.
// Backward (recomputed per anchor): with G_r = dL/dc_r,
//   dL/de_r = alpha_r a_i + beta_r e_r, alpha_r = G_r / (|e_r| |a_i|), beta_r = -G_r c_r / |e_r|^2,
//   dL/da_i = sum_r alpha_r e_r + delta_i a_i, delta_i = -sum_r G_r c_r / |a_i|^2,
//   dL/dPt_rj = alpha_r <a_i, z_j> + beta_r <e_r, z_j>   (straight-through: the soft rows take the hard rows' grad)
// and the latent gradients are left as B x B coefficient matrices for two GEMMs in the glue:
//   C[i, j] = sum_r alpha_r P_rj  ->  dz += C^T a, da = C z + delta a;  H = sum_i P_i^T diag(beta_i) P_i -> dz += H z
// (the direct soft path adds sum_r beta_r P_rj e_r to a B x d buffer instead of H).
// Norms are clamped at kEps (the clamp's side gets no gradient), as in the reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace nhl {
namespace sorted_nce {

constexpr double kEps = 1e-8;

template <typename T>
struct Inputs {
  int64_t B = 0, d = 0, m = 1;
  T inv_tau = 1;
  bool hard = true;
  bool gram = false;          // soft path through gz (d > B) rather than E = Pt z
  const T* z = nullptr;       // (B, d) latents gathered in sorted order
  const T* a = nullptr;       // (B, d) anchor latents
  const T* gz = nullptr;      // (B, B) z z^T
  const T* mt = nullptr;      // (B, B) a z^T: mt[i * B + j] = <a_i, z_j>
  const T* anorm = nullptr;   // (B,) |a_i|
};

// out (w) = sum_j p[j] x[j, :]; exact zeros of p (underflowed exponentials) are skipped
template <typename T>
inline void combine_rows(const T* p, const T* x, int64_t n, int64_t w, T* out) {
  std::fill(out, out + w, T(0));
  for (int64_t j = 0; j < n; ++j) {
    const T c = p[j];
    if (c == T(0)) continue;
    const T* xj = x + j * w;
#pragma omp simd
    for (int64_t t = 0; t < w; ++t) out[t] += c * xj[t];
  }
}

template <typename T>
inline T dot(const T* x, const T* y, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t t = 0; t < n; ++t) s += x[t] * y[t];
  return s;
}

// One thread's buffers, reused across anchors: O(B^2 + B w) whatever the batch.
template <typename T>
struct Workspace {
  std::vector<int64_t> order, jstar;
  std::vector<T> q, x, n2, lae, alpha, beta, row, dpt, pt, ex, tt;

  void init(const Inputs<T>& in) {
    const int64_t B = in.B;
    order.resize(B), jstar.resize(B), q.resize(B), x.resize(B), n2.resize(B), lae.resize(B), alpha.resize(B),
        beta.resize(B), row.resize(B), dpt.resize(B);
    if (!in.hard) {
      pt.resize(B * B);
      ex.resize(B * (in.gram ? B : in.d));
      if (!in.gram) tt.resize(B * B);
    }
  }
};

// Pt_r. = softmax_j(-|q_r - D_j| / tau_s); the largest logit is 0, the sum >= 1
template <typename T>
inline void soft_row(const Inputs<T>& in, const T* drow, T qr, T inv_ts, T* out) {
  T sum = 0;
  for (int64_t j = 0; j < in.B; ++j) {
    const T w = std::exp(-std::abs(qr - drow[j]) * inv_ts);
    out[j] = w;
    sum += w;
  }
  const T inv = T(1) / sum;
#pragma omp simd
  for (int64_t j = 0; j < in.B; ++j) out[j] *= inv;
}

// Sorted distances q, the hard picks j*(r) (the first index among equal distances) and, soft, all rows Pt.
template <typename T>
inline void sort_row(const Inputs<T>& in, const T* drow, T inv_ts, Workspace<T>& ws) {
  const int64_t B = in.B;
  std::iota(ws.order.begin(), ws.order.end(), int64_t(0));
  std::stable_sort(ws.order.begin(), ws.order.end(), [drow](int64_t l, int64_t r) { return drow[l] < drow[r]; });
  for (int64_t r = 0; r < B; ++r) {
    ws.q[r] = drow[ws.order[r]];
    // argmax_j -|q_r - D_j|: the j with D_j == q_r, the lowest index of a tie (first in the stable order)
    ws.jstar[r] = (r > 0 && ws.q[r] == ws.q[r - 1]) ? ws.jstar[r - 1] : ws.order[r];
  }
  if (!in.hard)
    for (int64_t r = 0; r < B; ++r) soft_row(in, drow, ws.q[r], inv_ts, ws.pt.data() + r * B);
}

// Forward of anchor i after sort_row: the logits x_r = c_r / tau (and |e_r|^2 in n2); returns l_i.
template <typename T>
inline T anchor_loss(const Inputs<T>& in, int64_t i, Workspace<T>& ws) {
  const int64_t B = in.B, d = in.d;
  const T eps = T(kEps);
  const T na = std::max(in.anorm[i], eps);
  const T* mrow = in.mt + i * B;
  for (int64_t r = 0; r < B; ++r) {
    T dt, n2;
    if (in.hard) {
      const int64_t j = ws.jstar[r];
      dt = mrow[j];
      n2 = in.gz[j * B + j];
    } else if (in.gram) {  // Y_r = Pt_r gz: |e_r|^2 = <Y_r, Pt_r>, and Y_r = <e_r, z_.> for the backward
      const T* p = ws.pt.data() + r * B;
      T* y = ws.ex.data() + r * B;
      combine_rows(p, in.gz, B, B, y);
      dt = dot(p, mrow, B);
      n2 = dot(y, p, B);
    } else {  // E_r = Pt_r z
      T* e = ws.ex.data() + r * d;
      combine_rows(ws.pt.data() + r * B, in.z, B, d, e);
      dt = dot(e, in.a + i * d, d);
      n2 = dot(e, e, d);
    }
    n2 = std::max(n2, T(0));
    ws.n2[r] = n2;
    ws.x[r] = dt / (std::max(std::sqrt(n2), eps) * na) * in.inv_tau;
  }
  T mx = ws.x[in.m];
  for (int64_t r = in.m + 1; r < B; ++r) mx = std::max(mx, ws.x[r]);
  T s = 0;
  for (int64_t r = in.m; r < B; ++r) s += std::exp(ws.x[r] - mx);
  const T neg = mx + std::log(s);
  T loss = 0;
  for (int64_t r = 0; r < in.m; ++r) {
    const T hi = std::max(ws.x[r], neg), lo = std::min(ws.x[r], neg);
    const T lae = hi + std::log1p(std::exp(lo - hi));
    ws.lae[r] = lae;  // kept for the backward
    loss += lae - ws.x[r];
  }
  return loss / T(in.m);
}

// Backward of anchor i (after sort_row and anchor_loss), for the loss scaled by `scale` (= grad_k / B):
// adds alpha_r P_r. to crow (C's row i), returns delta_i, adds the beta terms to h (B x B) or dzb (B x d,
// direct soft path), and writes dL/dD_i. to ddrow.
template <typename T>
inline T anchor_backward(const Inputs<T>& in, int64_t i, const T* drow, T inv_ts, T scale, Workspace<T>& ws,
                         T* crow, T* h, T* dzb, T* ddrow) {
  const int64_t B = in.B, d = in.d, m = in.m;
  const T eps = T(kEps);
  const T anorm = in.anorm[i];
  const T na = std::max(anorm, eps);
  const T g = scale * in.inv_tau / T(m);  // dL/dc = g * dl/dx (x = c / tau, l averaged over the m positives)
  // dl/dx_r: positives exp(x_r - lae_r) - 1, negatives sum_{p<m} exp(x_r - lae_p) (each term <= 1)
  T delta = 0;
  for (int64_t r = 0; r < B; ++r) {
    T dx;
    if (r < m) {
      dx = std::exp(ws.x[r] - ws.lae[r]) - T(1);
    } else {
      dx = 0;
      for (int64_t p = 0; p < m; ++p) dx += std::exp(ws.x[r] - ws.lae[p]);
    }
    const T G = g * dx;
    const T norm = std::sqrt(ws.n2[r]);
    const T ne = std::max(norm, eps);
    const T c = ws.x[r] / in.inv_tau;
    ws.alpha[r] = G / (ne * na);
    ws.beta[r] = norm > eps ? -G * c / (ne * ne) : T(0);
    delta -= G * c;
  }
  delta = anorm > eps ? delta / (na * na) : T(0);
  std::fill(ddrow, ddrow + B, T(0));
  const T* mrow = in.mt + i * B;
  for (int64_t r = 0; r < B; ++r) {
    const T al = ws.alpha[r], be = ws.beta[r];
    T* p = ws.row.data();
    // dL/dP_r. and the latent coefficients
    if (in.hard) {
      const int64_t js = ws.jstar[r];
      soft_row(in, drow, ws.q[r], inv_ts, p);
      const T* gj = in.gz + js * B;
#pragma omp simd
      for (int64_t j = 0; j < B; ++j) ws.dpt[j] = al * mrow[j] + be * gj[j];
      crow[js] += al;
      h[js * B + js] += be;
    } else {
      p = ws.pt.data() + r * B;
      const T* t = in.gram ? ws.ex.data() + r * B : ws.tt.data() + r * B;
      if (!in.gram) {  // <e_r, z_j> for every j
        const T* e = ws.ex.data() + r * d;
        T* tr = ws.tt.data() + r * B;
        for (int64_t j = 0; j < B; ++j) tr[j] = dot(e, in.z + j * d, d);
      }
#pragma omp simd
      for (int64_t j = 0; j < B; ++j) ws.dpt[j] = al * mrow[j] + be * t[j];
#pragma omp simd
      for (int64_t j = 0; j < B; ++j) crow[j] += al * p[j];
      if (be != T(0)) {
        for (int64_t j = 0; j < B; ++j) {
          const T w = be * p[j];
          if (w == T(0)) continue;
          if (in.gram) {
            T* hj = h + j * B;
#pragma omp simd
            for (int64_t l = 0; l < B; ++l) hj[l] += w * p[l];
          } else {
            T* out = dzb + j * d;
            const T* e = ws.ex.data() + r * d;
#pragma omp simd
            for (int64_t l = 0; l < d; ++l) out[l] += w * e[l];
          }
        }
      }
    }
    // softmax backward, then |q_r - D_j|: dD_j += dlogit sgn(q_r - D_j) / tau_s, q_r (= D at order[r]) the opposite
    const T s = dot(p, ws.dpt.data(), B);
    T dq = 0;
    for (int64_t j = 0; j < B; ++j) {
      const T diff = ws.q[r] - drow[j];
      const T sg = diff > T(0) ? T(1) : (diff < T(0) ? T(-1) : T(0));
      const T v = p[j] * (ws.dpt[j] - s) * sg * inv_ts;
      ddrow[j] += v;
      dq -= v;
    }
    ddrow[ws.order[r]] += dq;
  }
  return delta;
}

}  // namespace sorted_nce
}  // namespace nhl
