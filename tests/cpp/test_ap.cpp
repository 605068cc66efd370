// Torch-free checks of kernels/ap.h and kernels/ap_block_cpu.h against naive loops: nested
// distances, histograms -> counts below each bin, and index-ordered AP@k (a stable sort per query)
// through both the record log and the second-walk fallback.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/ap_block_cpu.h"
#include "kernels/tie_ap.h"

using namespace nhl;

static int failures = 0;
#define CHECK(cond, ...)                 \
  do {                                   \
    if (!(cond)) {                       \
      ++failures;                        \
      std::printf("FAIL %s:%d ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);          \
      std::printf("\n");                 \
    }                                    \
  } while (0)

static int naive_distance(const uint64_t* a, const uint64_t* b, int bits) {
  int d = 0;
  for (int j = 0; j < bits; ++j) d += int(((a[j / 64] ^ b[j / 64]) >> (j % 64)) & 1);
  return d;
}

template <class D>
static void check_problem(std::mt19937_64& g, int words, std::vector<int64_t> bits, int label_words, uint64_t k,
                          int64_t cap) {
  const int Q = 5, N = 300, L = int(bits.size());
  const int ls = label_words == 0 ? 1 : label_words;
  std::vector<uint64_t> q(Q * words), db(N * words), ql(Q * ls), dl(N * ls);
  for (auto& w : q) w = g();
  for (int i = 0; i < N; ++i)  // near-duplicates of the queries: many ties and small distances
    for (int w = 0; w < words; ++w) db[i * words + w] = q[(i % Q) * words + w] ^ (g() & g() & g());
  for (auto& x : ql) x = label_words == 0 ? g() % 3 : g() & g() & g();
  for (auto& x : dl) x = label_words == 0 ? g() % 3 : g() & g() & g();
  std::vector<int> full, off;
  std::vector<uint64_t> part;
  int bins = 0;
  for (int64_t b : bits) {
    full.push_back(int(b / 64));
    part.push_back(b % 64 ? (uint64_t(1) << (b % 64)) - 1 : 0);
    off.push_back(bins);
    bins += int(b) + 1;
  }
  ApProblem p{q.data(), db.data(), N, words, ql.data(), dl.data(), label_words,
              NestedLengths{L, full.data(), part.data(), off.data()}, bins};
  std::vector<uint64_t> hist(Q * bins), rec(std::max<int64_t>(cap, 1));
  std::vector<int> cut(Q * L);
  std::vector<double> acc(Q * L);
  std::vector<int64_t> hits(Q * L);
  index_ap_block<D, -1>(p, 0, Q, k, hist.data(), rec.data(), cap, cut.data(), acc.data(), hits.data());
  for (int qi = 0; qi < Q; ++qi)
    for (int l = 0; l < L; ++l) {
      std::vector<int> dist(N), order(N);
      for (int i = 0; i < N; ++i) dist[i] = naive_distance(&q[qi * words], &db[i * words], int(bits[l]));
      int dd[kApMaxLengths];
      nested_distances(&q[qi * words], &db[7 * words], p.len, dd);
      CHECK(dd[l] == dist[7], "nested distance length %d: %d vs %d", int(bits[l]), dd[l], dist[7]);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return dist[a] < dist[b]; });
      double sum = 0;
      int64_t found = 0;
      for (uint64_t r = 0; r < k; ++r) {
        const int i = order[r];
        if (relevant(&ql[qi * ls], &dl[i * ls], label_words)) sum += double(++found) / double(r + 1);
      }
      CHECK(found == hits[qi * L + l], "hits q%d l%d: %lld vs %lld", qi, l, (long long)found, (long long)hits[qi * L + l]);
      CHECK(std::fabs(sum - acc[qi * L + l]) < 1e-9, "AP sum q%d l%d: %.12f vs %.12f", qi, l, sum, acc[qi * L + l]);
    }
}

// tie_aware_ap_row vs the average over every order of the items inside each distance bin
// (dist must be non-decreasing in the index, so the sorted start is the first permutation).
static void check_tie_aware(const std::vector<int>& dist, const std::vector<int>& rel, int bins) {
  const int n = int(dist.size());
  std::vector<int64_t> tot(bins, 0), rl(bins, 0);
  for (int i = 0; i < n; ++i) tot[dist[i]]++, rl[dist[i]] += rel[i];
  for (int64_t k = 0; k <= n; ++k) {  // k = 0: full ranking
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    auto by_dist = [&](int a, int b) { return dist[a] < dist[b] || (dist[a] == dist[b] && a < b); };
    std::sort(order.begin(), order.end(), by_dist);
    double total = 0;
    long count = 0;
    do {  // permutations of `order` that stay sorted by distance = all tie orders
      bool sorted = true;
      for (int i = 1; i < n && sorted; ++i) sorted = dist[order[i - 1]] <= dist[order[i]];
      if (!sorted) continue;
      double sum = 0;
      int found = 0;
      for (int r = 0; r < (k ? k : n); ++r)
        if (rel[order[r]]) sum += double(++found) / double(r + 1);
      total += found ? sum / found : 0.0;
      ++count;
    } while (std::next_permutation(order.begin(), order.end()));
    const double got = tie_aware_ap_row(tot.data(), rl.data(), bins, k);
    CHECK(std::fabs(got - total / count) < 1e-12, "tie-aware k=%lld: %.15f vs %.15f", (long long)k, got, total / count);
  }
}

int main() {
  check_tie_aware({0, 1, 1, 1, 2, 2, 2, 2}, {1, 0, 1, 1, 0, 1, 0, 0}, 3);
  check_tie_aware({1, 1, 1, 1, 1, 1, 1}, {0, 1, 1, 0, 1, 0, 0}, 2);
  std::mt19937_64 g(7);
  for (uint64_t k : {uint64_t(1), uint64_t(10), uint64_t(300)}) {
    for (int64_t cap : {int64_t(1) << 20, int64_t(3)}) {  // a tiny record log forces the second walk
      check_problem<FixedLengths<8, 16, 32, 64, 128>>(g, 2, {8, 16, 32, 64, 128}, 0, k, cap);
      check_problem<AnyLengths<2>>(g, 2, {3, 8, 64, 65, 100}, 1, k, cap);
      check_problem<AnyLengths<0>>(g, 3, {5, 150, 192}, 2, k, cap);
      check_problem<AnyLengths<4>>(g, 4, {1, 64, 200, 256}, 3, k, cap);
    }
  }
  // histogram_to_base: counts below each bin and the straddling bin
  uint64_t bins[4] = {2 | kRelevantOne, 0, 3 | (2 * kRelevantOne), 1};
  uint64_t rel_total = 0;
  const int cut = histogram_to_base(bins, 4, 4, &rel_total);
  CHECK(cut == 2 && rel_total == 3 && bins[2] == (2 | kRelevantOne) && bins[3] == (5 | 3 * kRelevantOne),
        "histogram_to_base cut %d rel %llu", cut, (unsigned long long)rel_total);
  std::printf(failures ? "%d failures\n" : "all ap checks passed\n", failures);
  return failures ? 1 : 0;
}
