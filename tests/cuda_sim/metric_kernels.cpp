// Brute-force checks of the CUDA metric kernels (csrc/cuda/index_ap_cuda.cu,
// distance_histogram_cuda.cu) run under the CPU simulator (see run.sh). The reference ranks the
// database by (distance, index) with a stable sort and walks the ranks: no histograms.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "cuda/launchers.h"

using u64 = uint64_t;

// ------------------------------------------------------------------ problems

struct Spec {
  const char* why;
  int64_t nq, n;
  int words;
  std::vector<int64_t> bits;
  int label_words;   // 0: class indices, else multi-hot bitmasks of this many words
  int classes;       // distinct classes (label bits when multi-hot)
  int distinct;      // 0: random codes, else codes drawn from this many near-identical codes (ties)
  bool empty_last;   // the last query has no relevant item at all
  unsigned seed;
};

struct Problem {
  Spec s;
  std::vector<u64> q, db, ql, dl;  // codes (rows of s.words); labels (rows of max(1, label_words))
  int ls() const { return s.label_words ? s.label_words : 1; }
};

Problem make_problem(const Spec& s) {
  Problem p;
  p.s = s;
  std::mt19937_64 rng(s.seed);
  std::vector<u64> pool(size_t(s.distinct) * s.words);
  for (auto& w : pool) w = rng();
  for (int c = 1; c < s.distinct; ++c)  // near copies of code 0: a few bits apart, so distances tie
    for (int w = 0; w < s.words; ++w) pool[c * s.words + w] = pool[w] ^ (rng() & rng() & rng() & rng());
  auto code = [&](std::vector<u64>& v, int64_t rows) {
    v.resize(rows * s.words);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t c = s.distinct ? int64_t(rng() % s.distinct) : -1;
      for (int w = 0; w < s.words; ++w) v[r * s.words + w] = c >= 0 ? pool[c * s.words + w] : rng();
    }
  };
  code(p.q, s.nq);
  code(p.db, s.n);
  if (!s.distinct)  // some queries equal a database code: distance 0
    for (int64_t i = 0; i < s.nq; i += 2) std::copy_n(&p.db[(rng() % s.n) * s.words], s.words, &p.q[i * s.words]);
  // labels: class c, or multi-hot bit positions spread over every label word (bits 0 and 63 included)
  std::vector<int> pos(s.classes);
  for (int c = 0; c < s.classes; ++c) pos[c] = int((int64_t(c) * (64 * std::max(1, s.label_words) - 1)) / std::max(1, s.classes - 1));
  auto label = [&](std::vector<u64>& v, int64_t rows) {
    v.assign(rows * p.ls(), 0);
    for (int64_t r = 0; r < rows; ++r) {
      if (s.label_words == 0) { v[r] = rng() % s.classes; continue; }
      const int m = int(rng() % 4);  // 0..3 classes; 0: never relevant
      for (int j = 0; j < m; ++j) { const int b = pos[rng() % s.classes]; v[r * s.label_words + b / 64] |= u64(1) << (b % 64); }
    }
  };
  label(p.ql, s.nq);
  label(p.dl, s.n);
  if (s.empty_last) {
    const int64_t r = s.nq - 1;
    if (s.label_words == 0) p.ql[r] = u64(s.classes) + 5;  // a class no database item has
    else std::fill_n(&p.ql[r * s.label_words], s.label_words, u64(0));
  }
  return p;
}

// ------------------------------------------------------------------ reference: plain loops over bits

int dist_ref(const u64* a, const u64* b, int64_t bits) {
  int d = 0;
  for (int64_t j = 0; j < bits; ++j) d += int((a[j / 64] >> (j % 64) & 1) != (b[j / 64] >> (j % 64) & 1));
  return d;
}

bool relevant_ref(const Problem& p, int64_t qi, int64_t i) {
  if (p.s.label_words == 0) return p.ql[qi] == p.dl[i];
  for (int j = 0; j < 64 * p.s.label_words; ++j)
    if ((p.ql[qi * p.s.label_words + j / 64] >> (j % 64) & 1) && (p.dl[i * p.s.label_words + j / 64] >> (j % 64) & 1))
      return true;
  return false;
}

struct RefAp { double ap; int64_t hits; };

// Rank by (distance ascending, index ascending); AP over the relevant items with rank <= k.
RefAp ap_ref(const Problem& p, int64_t qi, int64_t bits, uint64_t k) {
  std::vector<int> d(p.s.n);
  for (int64_t i = 0; i < p.s.n; ++i) d[i] = dist_ref(&p.q[qi * p.s.words], &p.db[i * p.s.words], bits);
  std::vector<int64_t> order(p.s.n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return d[a] < d[b]; });
  double sum = 0;
  int64_t hits = 0;
  for (int64_t r = 1; r <= p.s.n && uint64_t(r) <= k; ++r)
    if (relevant_ref(p, qi, order[r - 1])) sum += double(++hits) / double(r);
  return {hits ? sum / double(hits) : 0.0, hits};
}

// ------------------------------------------------------------------ launches

struct Launch {
  int warps;
  bool scratch;        // global scratch rows instead of shared memory
  int64_t max_blocks;  // grid cap (the scratch path strides the warps over the queries)
};

std::string describe(const Problem& p, const Launch& lc) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "[%s | nq=%ld n=%ld L=%zu lw=%d, warps=%d %s max_blocks=%ld]", p.s.why, p.s.nq, p.s.n,
                p.s.bits.size(), p.s.label_words, lc.warps, lc.scratch ? "scratch" : "shared", lc.max_blocks);
  return buf;
}

int bins_of(const std::vector<int64_t>& bits) { int b = 0; for (int64_t x : bits) b += int(x) + 1; return b; }

constexpr u64 kGarbage = 0xABABABABABABABABull, kCanary = 0x5A5A5A5A5A5A5A5Aull;
constexpr size_t kGuard = 64;  // canary words after every output

// n values, then `guard` canary words (a write past the end shows, rather than corrupting the heap).
template <typename T>
std::vector<T> guarded(size_t n, T fill, size_t guard = kGuard) {
  std::vector<T> v(n + guard, fill);
  for (size_t i = n; i < v.size(); ++i) std::memcpy(&v[i], &kCanary, sizeof(T));
  return v;
}
template <typename T>
bool guard_intact(const std::vector<T>& v, size_t guard = kGuard) {
  for (size_t i = v.size() - guard; i < v.size(); ++i)
    if (std::memcmp(&v[i], &kCanary, sizeof(T)) != 0) return false;
  return true;
}

// A scratch of exactly the rows the glue allocates (min(max_blocks, query blocks) * warps),
// garbage inside (the kernels zero what they use), a row of canaries behind.
std::vector<u64> make_scratch(const Problem& p, const Launch& lc, int bins) {
  if (!lc.scratch) return {};
  const int64_t rows = std::min<int64_t>(lc.max_blocks, (p.s.nq + lc.warps - 1) / lc.warps) * lc.warps;
  return guarded<u64>(rows * bins, kGarbage, bins + kGuard);
}

void check_index_ap(const Problem& p, uint64_t k, const Launch& lc) {
  const int L = int(p.s.bits.size()), bins = bins_of(p.s.bits);
  const std::string what = describe(p, lc) + " k=" + std::to_string(k);
  std::vector<u64> scratch = make_scratch(p, lc, bins);
  auto ap = guarded<double>(L * p.s.nq, std::nan(""));
  auto hits = guarded<int64_t>(L * p.s.nq, -7);
  const cudaError_t rc = nhl_index_ap_cuda(p.q.data(), p.db.data(), p.s.nq, p.s.n, p.s.words, p.ql.data(), p.dl.data(),
                                           p.s.label_words, p.s.bits.data(), L, bins, lc.warps, lc.max_blocks, k,
                                           lc.scratch ? scratch.data() : nullptr, ap.data(), hits.data(), nullptr);
  CHECK(rc == cudaSuccess, "index_ap returned %d %s", rc, what.c_str());
  if (rc != cudaSuccess) return;
  for (int l = 0; l < L; ++l)
    for (int64_t qi = 0; qi < p.s.nq; ++qi) {
      const RefAp want = ap_ref(p, qi, p.s.bits[l], k);
      const int64_t at = l * p.s.nq + qi;
      CHECK(hits[at] == want.hits, "index_ap hits l=%d q=%ld: got %ld want %ld %s", l, qi, hits[at], want.hits, what.c_str());
      // the kernel sums precisions with atomics, in any order
      CHECK(std::fabs(ap[at] - want.ap) <= 1e-12, "index_ap ap l=%d q=%ld: got %.17g want %.17g %s", l, qi, ap[at], want.ap,
            what.c_str());
    }
  CHECK(guard_intact(ap) && guard_intact(hits), "index_ap wrote past its outputs %s", what.c_str());
  if (lc.scratch) CHECK(guard_intact(scratch, bins + kGuard), "index_ap wrote past its scratch rows %s", what.c_str());
}

void check_histogram(const Problem& p, const Launch& lc) {
  const int L = int(p.s.bits.size()), bins = bins_of(p.s.bits), b1 = int(p.s.bits.back()) + 1;
  const std::string what = describe(p, lc);
  std::vector<u64> scratch = make_scratch(p, lc, bins);
  auto tot = guarded<int64_t>(size_t(L) * p.s.nq * b1, -7), rel = guarded<int64_t>(size_t(L) * p.s.nq * b1, -7);
  const cudaError_t rc = nhl_distance_histogram_cuda(p.q.data(), p.db.data(), p.s.nq, p.s.n, p.s.words, p.ql.data(),
                                                     p.dl.data(), p.s.label_words, p.s.bits.data(), L, bins, b1, lc.warps,
                                                     lc.max_blocks, lc.scratch ? scratch.data() : nullptr, tot.data(),
                                                     rel.data(), nullptr);
  CHECK(rc == cudaSuccess, "distance_histogram returned %d %s", rc, what.c_str());
  if (rc != cudaSuccess) return;
  for (int l = 0; l < L; ++l)
    for (int64_t qi = 0; qi < p.s.nq; ++qi) {
      std::vector<int64_t> t(b1, 0), r(b1, 0);  // bins past bits[l] stay 0
      for (int64_t i = 0; i < p.s.n; ++i) {
        const int d = dist_ref(&p.q[qi * p.s.words], &p.db[i * p.s.words], p.s.bits[l]);
        t[d]++;
        r[d] += relevant_ref(p, qi, i);
      }
      const int64_t row = (int64_t(l) * p.s.nq + qi) * b1;
      int bad = -1;
      for (int d = 0; d < b1 && bad < 0; ++d)
        if (tot[row + d] != t[d] || rel[row + d] != r[d]) bad = d;
      CHECK(bad < 0, "distance_histogram l=%d q=%ld d=%d: got (%ld, %ld) want (%ld, %ld) %s", l, qi, bad,
            bad < 0 ? 0 : tot[row + bad], bad < 0 ? 0 : rel[row + bad], bad < 0 ? 0 : t[bad], bad < 0 ? 0 : r[bad],
            what.c_str());
    }
  CHECK(guard_intact(tot) && guard_intact(rel), "distance_histogram wrote past its outputs %s", what.c_str());
  if (lc.scratch) CHECK(guard_intact(scratch, bins + kGuard), "distance_histogram wrote past its scratch rows %s", what.c_str());
}

// Both kernels on one problem, for each launch and each k (0: no top-k, i.e. k = N).
void check_problem(const Spec& s, const std::vector<Launch>& launches, std::vector<uint64_t> ks) {
  const Problem p = make_problem(s);
  for (const Launch& lc : launches) {
    check_histogram(p, lc);
    for (uint64_t k : ks) check_index_ap(p, k ? k : uint64_t(s.n), lc);
  }
}

// Argument checks and the empty query set: nothing launched, nothing written.
void check_edges() {
  const Problem p = make_problem({"edges", 3, 40, 1, {7, 64}, 0, 3, 0, false, 99});
  const int bins = bins_of(p.s.bits);
  std::vector<double> ap(2 * 3, -1);
  std::vector<int64_t> hits(2 * 3, -1), tot(2 * 3 * 65, -1), rel(2 * 3 * 65, -1);
  const struct { int warps; long max_blocks; } bad[] = {{0, 1}, {5, 1}, {4, 0}};
  for (auto [warps, max_blocks] : bad) {
    CHECK(nhl_index_ap_cuda(p.q.data(), p.db.data(), 3, 40, 1, p.ql.data(), p.dl.data(), 0, p.s.bits.data(), 2, bins,
                            warps, max_blocks, 40, nullptr, ap.data(), hits.data(), nullptr) == cudaErrorInvalidValue,
          "index_ap accepts warps=%d max_blocks=%ld", warps, max_blocks);
    CHECK(nhl_distance_histogram_cuda(p.q.data(), p.db.data(), 3, 40, 1, p.ql.data(), p.dl.data(), 0, p.s.bits.data(), 2,
                                      bins, 65, warps, max_blocks, nullptr, tot.data(), rel.data(),
                                      nullptr) == cudaErrorInvalidValue,
          "distance_histogram accepts warps=%d max_blocks=%ld", warps, max_blocks);
  }
  // no queries: success before the argument checks, since the glue's scratch sizing then gives max_blocks = 0
  CHECK(nhl_index_ap_cuda(p.q.data(), p.db.data(), 0, 40, 1, p.ql.data(), p.dl.data(), 0, p.s.bits.data(), 2, bins, 4, 0,
                          40, nullptr, ap.data(), hits.data(), nullptr) == cudaSuccess &&
            std::all_of(hits.begin(), hits.end(), [](int64_t x) { return x == -1; }),
        "index_ap with no queries");
  CHECK(nhl_distance_histogram_cuda(p.q.data(), p.db.data(), 0, 40, 1, p.ql.data(), p.dl.data(), 0, p.s.bits.data(), 2,
                                    bins, 65, 4, 0, nullptr, tot.data(), rel.data(), nullptr) == cudaSuccess &&
            std::all_of(tot.begin(), tot.end(), [](int64_t x) { return x == -1; }),
        "distance_histogram with no queries");
}

int main(int argc, char** argv) {
  simcheck::parse_args(argc, argv);
  const std::vector<int64_t> mixed = {7, 64, 65, 130};  // partial first word, word edge, one past, 3rd word
  // The glue's launches: 4 warps with shared histograms, or global scratch rows for a grid capped
  // below the query blocks so that every warp strides over several queries (1 block, 2 blocks).
  const Launch shared4{4, false, 1L << 30}, scratch1{4, true, 1}, scratch2{4, true, 2};
  const std::vector<Launch> glue = {shared4, scratch1, scratch2};
  // Other warp counts: a block of 1, 2 or 3 warps; scratch with a cap above the query blocks.
  const std::vector<Launch> other = {{1, false, 1L << 30}, {3, true, 2}, {2, true, 1L << 30}};

  check_edges();
  // 13 queries = 3 full blocks + one lone warp; n not a multiple of 32 (a partial last step).
  // k: no cut, the first item only, and a cut inside the ranking.
  check_problem({"class labels, lengths 7/64/65/130", 13, 150, 3, mixed, 0, 4, 0, true, 1}, glue, {0, 1, 17});
  // Heavy ties: 3 near-identical codes, so every rank cut falls inside a bin shared by many items
  // (the __match_any_sync groups hold several lanes; ties must resolve by index).
  check_problem({"ties, 3 distinct codes", 9, 200, 3, mixed, 0, 3, 3, true, 2}, glue, {0, 5, 64, 199});
  // Multi-hot labels of 2 words (label bits 0..127, the shared bit may sit in either word).
  check_problem({"multi-hot labels, 2 words, ties", 9, 120, 3, mixed, 2, 7, 4, true, 3}, glue, {0, 10});
  if (!simcheck::quick) {
    check_problem({"multi-hot labels, 1 word, 1-bit length", 7, 100, 1, {1, 33, 64}, 1, 5, 0, true, 4}, glue, {0, 3});
    check_problem({"class labels, other block shapes", 11, 90, 3, mixed, 0, 3, 5, true, 5}, other, {0, 7});
    check_problem({"multi-hot labels, 3 words, other block shapes", 6, 64, 3, mixed, 3, 9, 0, false, 6}, other, {0, 32});
    // One query (one warp of a 4-warp block); one database item; every code equal (one bin).
    check_problem({"one query", 1, 70, 3, mixed, 0, 2, 0, false, 7}, glue, {0, 1, 69});
    check_problem({"one database item", 5, 1, 3, mixed, 0, 2, 0, true, 8}, glue, {0});
    check_problem({"every code equal", 6, 50, 3, mixed, 0, 2, 1, true, 9}, glue, {0, 20});
    // 40 lengths > 32: the per-length loops of the lanes (l = lane; l < L; l += 32) take 2 rounds.
    std::vector<int64_t> many;
    for (int i = 0; i < 40; ++i) many.push_back(3 * i + 1);
    check_problem({"40 lengths", 5, 80, 2, many, 0, 3, 6, true, 10}, {shared4, scratch1}, {0, 9});
    // 64 lengths, the most the glue accepts (kApMaxLengths = kWarpMaxLengths): full per-warp tables.
    std::vector<int64_t> most;
    for (int i = 0; i < 64; ++i) most.push_back(2 * i + 1);
    check_problem({"64 lengths", 5, 70, 2, most, 1, 4, 5, true, 12}, {{1, false, 1L << 30}, scratch1}, {0, 11});
    // 4 warps x 2103 bins x 8 B = 67 KiB of shared histograms: past the default 48 KiB, so the
    // launcher must opt in with cudaFuncSetAttribute (the simulator rejects the launch otherwise).
    check_problem({"long codes, 67 KiB shared", 6, 40, 18, {1000, 1100}, 0, 3, 0, true, 11}, {shared4, scratch2}, {0, 5});
  }
  return simcheck::finish("metrics");
}
