// Torch-free tie-aware AP of one (length, query) row of distance histograms: the exact expectation
// over uniformly random orders inside every distance bin (McFee & Lanckriet 2010; He et al. 2018).
// Same closed forms as nhl_fast.reference.tie_ap:
//   bin with n items (r relevant) after N items (R relevant):
//     E[sum of precisions] = (r/n) [(R+1) S1 + (r-1)/(n-1) S2],
//     S1 = sum_{i=1..n} 1/(N+i), S2 = sum_{i=1..n} (i-1)/(N+i) = n - (N+1) S1
//   AP@k: the bin straddling rank k gives m items; X ~ hypergeometric(n, r, m) relevant among them,
//     E[AP@k] = sum_x P(X=x) (S_full + (x/m)[(R+1) S1(m) + (x-1)/(m-1) S2(m)]) / (R + x).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace nhl {

// digamma(x), x > 0: recurrence up to x >= 12, then the asymptotic series (error < 1e-15).
inline double digamma(double x) {
  double r = 0.0;
  while (x < 12.0) {
    r -= 1.0 / x;
    x += 1.0;
  }
  const double f = 1.0 / (x * x);
  return r + std::log(x) - 0.5 / x -
         f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f * (1.0 / 240 - f * (1.0 / 132)))));
}

// S1 = sum_{i=1..n} 1 / (below + i): summed directly for small n (exact), else a digamma difference.
inline double harmonic_span(double below, int64_t n) {
  if (n <= 64) {
    double s = 0.0;
    for (int64_t i = n; i >= 1; --i) s += 1.0 / (below + double(i));
    return s;
  }
  return digamma(below + double(n) + 1.0) - digamma(below + 1.0);
}

inline double expected_bin_precision(double n_below, double r_below, int64_t n, int64_t r) {
  if (n == 0 || r == 0) return 0.0;
  const double s1 = harmonic_span(n_below, n), s2 = double(n) - (n_below + 1.0) * s1;
  const double frac = n > 1 ? double(r - 1) / double(n - 1) : 0.0;
  return double(r) / double(n) * ((r_below + 1.0) * s1 + frac * s2);
}

inline double log_choose(double a, double b) { return std::lgamma(a + 1) - std::lgamma(b + 1) - std::lgamma(a - b + 1); }

// k == 0: full ranking.
inline double tie_aware_ap_row(const int64_t* tot, const int64_t* rel, int bins, int64_t k) {
  double n_below = 0, r_below = 0, sum = 0;
  if (k == 0) {
    for (int d = 0; d < bins; ++d) {
      sum += expected_bin_precision(n_below, r_below, tot[d], rel[d]);
      n_below += double(tot[d]);
      r_below += double(rel[d]);
    }
    return r_below > 0 ? sum / r_below : 0.0;
  }
  int d = 0;
  for (; d < bins && n_below + double(tot[d]) < double(k); ++d) {
    sum += expected_bin_precision(n_below, r_below, tot[d], rel[d]);
    n_below += double(tot[d]);
    r_below += double(rel[d]);
  }
  if (d == bins) return r_below > 0 ? sum / r_below : 0.0;  // k > N: cannot happen after the checks
  const int64_t n = tot[d], r = rel[d], m = k - int64_t(n_below);
  const double s1 = harmonic_span(n_below, m), s2 = double(m) - (n_below + 1.0) * s1;
  auto value = [&](int64_t x) {  // (S_full + E[straddle | X = x]) / (R_<d* + x)
    const double frac = m > 1 ? double(x - 1) / double(m - 1) : 0.0;
    const double t = double(x) / double(m) * ((r_below + 1.0) * s1 + frac * s2);
    const double denom = r_below + double(x);
    return denom > 0 ? (sum + t) / denom : 0.0;
  };
  if (m == n) return value(r);
  if (r == n) return value(m);
  if (r == 0) return value(0);
  // hypergeometric expectation, outward from the mode (the pmf is log-concave) until negligible
  const int64_t lo = std::max<int64_t>(0, m - (n - r)), hi = std::min(r, m);
  const int64_t mode = std::clamp<int64_t>((m + 1) * (r + 1) / (n + 2), lo, hi);
  const double p_mode = std::exp(log_choose(double(r), double(mode)) + log_choose(double(n - r), double(m - mode)) -
                                 log_choose(double(n), double(m)));
  double acc = p_mode * value(mode), p = p_mode;
  for (int64_t x = mode; x < hi && p > 1e-300; ++x) {  // P(x+1) / P(x)
    p *= double(r - x) * double(m - x) / (double(x + 1) * double(n - r - m + x + 1));
    acc += p * value(x + 1);
    if (p < 1e-20 * p_mode) break;
  }
  p = p_mode;
  for (int64_t x = mode; x > lo && p > 1e-300; --x) {  // P(x-1) / P(x)
    p *= double(x) * double(n - r - m + x) / (double(r - x + 1) * double(m - x + 1));
    acc += p * value(x - 1);
    if (p < 1e-20 * p_mode) break;
  }
  return acc;
}

}  // namespace nhl
