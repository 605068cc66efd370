// The per-anchor core of the fused soft-sort + SortedNCE op (spec: nhl_fast/reference.py sorted_nce), torch-free.
//
// For anchor i of one code length (distances D_i. in [0, 1], SoftSort temperature tau_s):
//   q = sort(D_i.) ascending (stable, pi the order), Pt_rj = softmax_j(-|q_r - D_ij| / tau_s), P = Pt (soft) or
//   the one-hot of argmax_j (first index, straight-through) (hard); e_r = sum_j P_rj z_j,
//   c_r = <e_r, a_i> / (|e_r| |a_i|), l_i = (1/m) sum_{r<m} [lae(x_r, neg) - x_r], x = c / tau,
//   neg = logsumexp_{r>=m} x_r.
//
// SoftSort as two linear recurrences. In sorted coordinates the row weights are w_rs = exp(-|q_r - q_s| / tau_s)
// (candidate pi(s) has distance q_s), so for s <= r the weight is exp(-(q_r - q_s) / tau_s) and for s > r
// exp(-(q_s - q_r) / tau_s). With f_r = exp(-(q_r - q_{r-1}) / tau_s) <= 1, any sequence x_s has
//   F_r = sum_{s<=r} w_rs x_s = f_r F_{r-1} + x_r,   K_r = sum_{s>r} w_rs x_s = f_{r+1} (K_{r+1} + x_{r+1}),
// so (W x)_r = F_r + K_r costs O(B) per anchor: Z_r = (W 1)_r, the soft latent e~_r = (W z_pi)_r / Z_r in O(B d),
// never a B x B row (and nothing B x B x B or B x B x d). Every factor is <= 1 (no overflow at any tau_s), a
// tie has factor exactly 1. The derivative of |q_r - q_s| is sgn(q_r - q_s), 0 on a tie, so the backward also
// needs the strict sums (q_s < q_r, q_s > q_r), read off the same scans at tie-group boundaries (scan()).
//
// Backward (recomputed per anchor), G_r = dL/dc_r:
//   dL/de_r = alpha_r a_i + beta_r h_r, alpha_r = G_r / (|h_r| |a_i|), beta_r = -G_r c_r / |h_r|^2,
//   dL/da_i = sum_r alpha_r h_r + delta_i a_i, delta_i = -sum_r G_r c_r / |a_i|^2,
// h_r the forward latent (e~_r soft, z_{j*(r)} hard). With y_r = dL/de_r / Z_r and gamma_r = <y_r, e~_r>,
// dL/dw_rs = <y_r, z_s - e~_r> (the softmax backward; straight-through for hard: the soft rows take the hard
// rows' gradient), and D_i,pi(k) = q_k receives, from the rank side and the candidate side,
//   dq_k = (1/tau_s) [ <y_k, Ca_k - Ab_k> + gamma_k (Zb_k - Za_k) + <z_k, Ya_k - Yb_k> + Gb_k - Ga_k ]
// where Xb_k = sum_{q_s < q_k} w_ks x_s and Xa_k = sum_{q_s > q_k} w_ks x_s (strict below / above) for
// x = z_pi (A, C), 1 (Z), y (Y), gamma (G). The latents: soft dz_pi(s) += (W y)_s (its a_i part as row i of
// C = sum_r alpha_r P_r., applied by the glue's GEMMs, the rest into a per-thread B x d buffer); hard
// dz_j* += alpha_r a_i + beta_r z_j* (C, and per-thread coefficients of z_j). All O(B d) per anchor.
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

// B here is the number of candidates of each anchor (N of the op: v (N, b), z (N, d)); anchors index a and mt.
template <typename T>
struct Inputs {
  int64_t B = 0, d = 0, m = 1;
  T inv_tau = 1;
  bool hard = true;
  const T* z = nullptr;       // (B, d) candidates' latents
  const T* a = nullptr;       // (anchors, d) anchor latents
  const T* zn2 = nullptr;     // (B,) |z_j|^2
  const T* mt = nullptr;      // (anchors, B) a z^T: mt[i * B + j] = <a_i, z_j>
  const T* anorm = nullptr;   // (anchors,) |a_i|
};

// One thread's buffers, reused across anchors: O(B d) whatever the batch.
template <typename T>
struct Workspace {
  std::vector<int64_t> order, jstar, last;
  std::vector<T> q, f, zsum, zlo, zhi, x, n2, lae, alpha, beta, ea, eh, pd, gam, sl, sh, sf, xl, xh, gl, gh;
  std::vector<T> buf, acc, lo;  // (B, d) per-rank vectors; two d-wide running sums

  void init(const Inputs<T>& in, bool backward) {
    const int64_t B = in.B, d = in.d;
    for (auto* v : {&order, &jstar, &last}) v->resize(B);
    for (auto* v : {&q, &f, &zsum, &zlo, &zhi, &x, &n2, &lae, &alpha, &beta, &ea, &eh, &pd, &gam, &sl, &sh, &sf,
                    &xl, &xh, &gl, &gh})
      v->resize(B);
    if (!in.hard || backward) buf.resize(B * d), acc.resize(d), lo.resize(d);
  }
};

// below_r = sum_{q_s < q_r} w_rs x_s, above_r = sum_{q_s > q_r} w_rs x_s and (if full) full_r = sum_s w_rs x_s
template <typename T>
inline void scan(const Workspace<T>& ws, int64_t B, const T* x, T* below, T* above, T* full) {
  const T* f = ws.f.data();
  T F = 0;
  for (int64_t r = 0; r < B; ++r) {
    below[r] = (r > 0 && ws.q[r] == ws.q[r - 1]) ? below[r - 1] : f[r] * F;
    F = f[r] * F + x[r];
    if (full) full[r] = F;
  }
  T K = 0;
  for (int64_t r = B - 1; r >= 0; --r) {
    if (r < B - 1) K = f[r + 1] * (K + x[r + 1]);
    above[r] = (r < B - 1 && ws.q[r + 1] == ws.q[r]) ? above[r + 1] : K;
    if (full) full[r] += K;
  }
}

// Sorted distances q, the order pi, the hard picks j*(r) (the first index among equal distances), the last rank
// of each tie group, the recurrence factors f and the normalisers Z (zsum) with their strict parts.
template <typename T>
inline void sort_row(const Inputs<T>& in, const T* drow, T inv_ts, Workspace<T>& ws) {
  const int64_t B = in.B;
  std::iota(ws.order.begin(), ws.order.end(), int64_t(0));
  std::stable_sort(ws.order.begin(), ws.order.end(), [drow](int64_t l, int64_t r) { return drow[l] < drow[r]; });
  for (int64_t r = 0; r < B; ++r) {
    ws.q[r] = drow[ws.order[r]];
    const bool tie = r > 0 && ws.q[r] == ws.q[r - 1];
    // argmax_j -|q_r - D_j|: the j with D_j == q_r, the lowest index of a tie (first in the stable order)
    ws.jstar[r] = tie ? ws.jstar[r - 1] : ws.order[r];
    ws.f[r] = r == 0 ? T(0) : (tie ? T(1) : std::exp(-(ws.q[r] - ws.q[r - 1]) * inv_ts));
  }
  for (int64_t r = B - 1; r >= 0; --r) ws.last[r] = (r < B - 1 && ws.q[r + 1] == ws.q[r]) ? ws.last[r + 1] : r;
  std::fill(ws.x.begin(), ws.x.end(), T(1));
  scan(ws, B, ws.x.data(), ws.zlo.data(), ws.zhi.data(), ws.zsum.data());
}

// The soft latents e~_r = (W z_pi)_r / Z_r into ws.buf (row r), two scans over d-wide running sums. Per rank:
// ea = <a_i, e~_r>, eh = <h_r, e~_r> (h_r = e~_r soft, z_j*(r) hard) and, for the backward, the strict parts
// <a_i, Ca_r - Ab_r> (sl) and <h_r, Ca_r - Ab_r> (sh).
template <typename T>
inline void soft_latents(const Inputs<T>& in, int64_t i, Workspace<T>& ws) {
  const int64_t B = in.B, d = in.d;
  const T* ai = in.a + i * d;
  T* buf = ws.buf.data();
  T* acc = ws.acc.data();
  T* lo = ws.lo.data();
  // K_r = sum_{s>r} w_rs z_pi(s) into buf, from the top
  std::fill(buf + (B - 1) * d, buf + B * d, T(0));
  for (int64_t r = B - 2; r >= 0; --r) {
    const T fn = ws.f[r + 1];
    const T* zn = in.z + ws.order[r + 1] * d;
    const T* up = buf + (r + 1) * d;
    T* out = buf + r * d;
#pragma omp simd
    for (int64_t t = 0; t < d; ++t) out[t] = fn * (up[t] + zn[t]);
  }
  // F_r = sum_{s<=r} w_rs z_pi(s) (acc) and its strict part Ab_r (lo); e~_r = (F_r + K_r) / Z_r over K_r,
  // all of a rank's products in one sweep over d
  std::fill(acc, acc + d, T(0));
  std::fill(lo, lo + d, T(0));
  const T soft = in.hard ? T(0) : T(1), hard = T(1) - soft;
  for (int64_t r = 0; r < B; ++r) {
    const T fr = ws.f[r];
    const bool tie = r > 0 && ws.q[r] == ws.q[r - 1];
    const T kl = tie ? T(1) : T(0), ka = tie ? T(0) : fr;  // Ab_r = Ab_{r-1} on a tie, else f_r F_{r-1}
    const T* zr = in.z + ws.order[r] * d;
    const T* hz = in.hard ? in.z + ws.jstar[r] * d : zr;   // h_r = z_j*(r) (hard) or e~_r (soft)
    T* e = buf + r * d;
    const T* cs = buf + ws.last[r] * d;  // Ca_r = K at the last rank of r's tie group (not yet overwritten)
    const T iz = T(1) / ws.zsum[r];
    T ea = 0, eh = 0, pa = 0, ph = 0;
#pragma omp simd reduction(+ : ea, eh, pa, ph)
    for (int64_t t = 0; t < d; ++t) {
      const T l = kl * lo[t] + ka * acc[t];
      const T f = fr * acc[t] + zr[t];
      const T x = (f + e[t]) * iz;
      const T diff = cs[t] - l;  // read before e (possibly cs) is overwritten
      const T h = hard * hz[t] + soft * x;
      lo[t] = l;
      acc[t] = f;
      e[t] = x;
      ea += ai[t] * x;
      eh += h * x;
      pa += ai[t] * diff;
      ph += h * diff;
    }
    ws.ea[r] = ea, ws.eh[r] = eh, ws.sl[r] = pa, ws.sh[r] = ph;
  }
}

// The per-rank logits x_r = c_r / tau (and |h_r|^2 in n2) from <h_r, a_i> and |h_r|^2; returns l_i.
template <typename T>
inline T rank_loss(const Inputs<T>& in, int64_t i, Workspace<T>& ws) {
  const int64_t B = in.B;
  const T eps = T(kEps);
  const T na = std::max(in.anorm[i], eps);
  for (int64_t r = 0; r < B; ++r) {
    T dt, n2;
    if (in.hard) {
      const int64_t j = ws.jstar[r];
      dt = in.mt[i * B + j];
      n2 = in.zn2[j];
    } else {
      dt = ws.ea[r];
      n2 = ws.eh[r];
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

// Forward of anchor i after sort_row: l_i (soft: the latents by the recurrences; hard: reads of the Grams).
template <typename T>
inline T anchor_loss(const Inputs<T>& in, int64_t i, Workspace<T>& ws) {
  if (!in.hard) soft_latents(in, i, ws);
  return rank_loss(in, i, ws);
}

// One rank of a d-wide scan: acc <- f acc + c h, lo <- kl lo + ka acc_old + kn acc_new (a strict part that is
// kept, renewed from the sum before or after this rank); adds the new acc to out (kOut); returns <z, lo>.
template <bool kOut, typename T>
inline T scan_step(T* acc, T* lo, const T* h, const T* z, T* out, int64_t d, T f, T c, T kl, T ka, T kn) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t t = 0; t < d; ++t) {
    const T old = acc[t];
    const T now = f * old + c * h[t];
    const T l = kl * lo[t] + ka * old + kn * now;
    acc[t] = now;
    lo[t] = l;
    s += z[t] * l;
    if constexpr (kOut) out[t] += now;
  }
  return s;
}

// Backward of anchor i after sort_row, for the loss scaled by `scale` (= grad_k / B): adds the alpha
// coefficients to crow (C's row i), the beta terms to dzb (soft, B x d) or hbeta (hard, B: dz_j += hbeta_j z_j),
// writes dL/dD_i. to ddrow; returns delta_i.
template <typename T>
inline T anchor_backward(const Inputs<T>& in, int64_t i, T inv_ts, T scale, Workspace<T>& ws, T* crow, T* dzb,
                         T* hbeta, T* ddrow) {
  const int64_t B = in.B, d = in.d, m = in.m;
  soft_latents(in, i, ws);
  rank_loss(in, i, ws);
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
    const T iz = T(1) / ws.zsum[r];
    ws.alpha[r] = G / (ne * na);
    ws.beta[r] = norm > eps ? -G * c / (ne * ne) : T(0);
    delta -= G * c;
    // rank side: <y_r, Ca_r - Ab_r> and gamma_r = <y_r, e~_r>, y_r = (alpha_r a_i + beta_r h_r) / Z_r
    ws.pd[r] = (ws.alpha[r] * ws.sl[r] + ws.beta[r] * ws.sh[r]) * iz;
    ws.gam[r] = (ws.alpha[r] * ws.ea[r] + ws.beta[r] * ws.eh[r]) * iz;
    ws.x[r] = ws.alpha[r] * iz;  // the scalar part of y (times a_i)
  }
  delta = anorm > eps ? delta / (na * na) : T(0);
  // scalar scans: alpha / Z (C's row, soft; the a_i part of Ys), gamma
  scan(ws, B, ws.x.data(), ws.sl.data(), ws.sh.data(), in.hard ? nullptr : ws.sf.data());
  scan(ws, B, ws.gam.data(), ws.gl.data(), ws.gh.data(), static_cast<T*>(nullptr));
  // vector scans of x_r = beta_r h_r / Z_r: strict parts dotted with z_pi(k) (xl, xh); soft, (W x) into dzb
  T* acc = ws.acc.data();
  T* lo = ws.lo.data();
  auto step = [&](int64_t r, const T* h, T f, T c, T kl, T ka, T kn) {
    const T* zr = in.z + ws.order[r] * d;
    return in.hard ? scan_step<false>(acc, lo, h, zr, static_cast<T*>(nullptr), d, f, c, kl, ka, kn)
                   : scan_step<true>(acc, lo, h, zr, dzb + ws.order[r] * d, d, f, c, kl, ka, kn);
  };
  auto hvec = [&](int64_t r) { return in.hard ? in.z + ws.jstar[r] * d : ws.buf.data() + r * d; };
  std::fill(acc, acc + d, T(0));
  std::fill(lo, lo + d, T(0));
  for (int64_t r = 0; r < B; ++r) {  // below (strict: kept on a tie), inclusive
    const bool tie = r > 0 && ws.q[r] == ws.q[r - 1];
    const T fr = ws.f[r];
    ws.xl[r] = step(r, hvec(r), fr, ws.beta[r] / ws.zsum[r], tie ? T(1) : T(0), tie ? T(0) : fr, T(0));
  }
  std::fill(acc, acc + d, T(0));
  std::fill(lo, lo + d, T(0));
  for (int64_t r = B - 1; r >= 0; --r) {  // above (strict: renewed past a tie group), exclusive
    const bool up = r < B - 1;
    const T fn = up ? ws.f[r + 1] : T(0);
    const T c = up ? fn * ws.beta[r + 1] / ws.zsum[r + 1] : T(0);
    const T kb = up && ws.q[r + 1] != ws.q[r] ? T(1) : T(0);
    ws.xh[r] = step(r, up ? hvec(r + 1) : in.z, fn, c, T(1) - kb, T(0), kb);
  }
  const T* mrow = in.mt + i * B;
  for (int64_t k = 0; k < B; ++k) {
    const int64_t j = ws.order[k];
    const T q = mrow[j] * (ws.sh[k] - ws.sl[k]) + ws.xh[k] - ws.xl[k];
    ddrow[j] = (ws.pd[k] + q + ws.gam[k] * (ws.zlo[k] - ws.zhi[k]) + ws.gl[k] - ws.gh[k]) * inv_ts;
    if (in.hard) {
      const int64_t js = ws.jstar[k];
      crow[js] += ws.alpha[k];
      hbeta[js] += ws.beta[k];
    } else {
      crow[j] += ws.sf[k];
    }
  }
  return delta;
}

}  // namespace sorted_nce
}  // namespace nhl
