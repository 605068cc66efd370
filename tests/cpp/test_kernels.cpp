// Torch-free checks of csrc/kernels/*.h against brute force on plain bit arrays (ctest).
// Covers: popcount and prefix masks, the LSB-first packing convention, one-pass multi-length
// distances (lengths not multiples of 64 or 4), the nibble transpose, counting selection and
// sort, and the full top-k scan (scalar and AVX2 paths) with heavy ties.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/bits.h"
#include "kernels/hamming.h"
#include "kernels/nibble_avx2.h"
#include "kernels/topk_scan.h"
#include "kernels/topk_select.h"

static int failures = 0;
#define CHECK(cond, ...)                                            \
  do {                                                              \
    if (!(cond)) {                                                  \
      ++failures;                                                   \
      if (failures < 20) {                                          \
        std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::printf(__VA_ARGS__);                                   \
        std::printf("\n");                                          \
      }                                                             \
    }                                                               \
  } while (0)

using Bits = std::vector<uint8_t>;  // one code as 0/1 per bit

// Pack per the documented convention: bit j -> word j / 64, bit position j % 64.
static std::vector<uint64_t> pack(const std::vector<Bits>& codes, int W) {
  std::vector<uint64_t> out(codes.size() * W, 0);
  for (size_t i = 0; i < codes.size(); ++i)
    for (size_t j = 0; j < codes[i].size(); ++j)
      if (codes[i][j]) out[i * W + j / 64] |= uint64_t(1) << (j % 64);
  return out;
}

static int brute_distance(const Bits& a, const Bits& b, int bits) {
  int d = 0;
  for (int j = 0; j < bits; ++j) d += a[j] != b[j];
  return d;
}

// Few distinct codes (`distinct` > 0) make many exact ties.
static std::vector<Bits> random_codes(std::mt19937_64& rng, int n, int bits, int distinct) {
  std::vector<Bits> pool(distinct > 0 ? distinct : n, Bits(bits));
  for (auto& c : pool)
    for (auto& b : c) b = rng() & 1;
  std::vector<Bits> out(n);
  for (int i = 0; i < n; ++i) out[i] = pool[distinct > 0 ? rng() % distinct : i];
  return out;
}

static void test_popcount_and_masks(std::mt19937_64& rng) {
  for (int t = 0; t < 1000; ++t) {
    const uint64_t x = rng() & rng();
    int naive = 0;
    for (int j = 0; j < 64; ++j) naive += (x >> j) & 1;
    CHECK(nhl::popcount64(x) == naive, "x=%llx", (unsigned long long)x);
  }
  for (int bits = 1; bits <= 256; ++bits)
    for (int w = 0; w < 4; ++w) {
      uint64_t naive = 0;
      for (int j = 0; j < 64; ++j)
        if (w * 64 + j < bits) naive |= uint64_t(1) << j;
      CHECK(nhl::prefix_mask(bits, w) == naive, "bits=%d w=%d", bits, w);
    }
  CHECK(nhl::words_for_bits(64) == 1 && nhl::words_for_bits(65) == 2 && nhl::words_for_bits(1) == 1, "words");
}

static void test_packing_convention() {
  // bit j of the code is (word[j / 64] >> (j % 64)) & 1: so as bytes (little-endian) bit j is
  // bit j % 8 of byte j / 8, which is faiss's binary layout.
  std::vector<Bits> one(1, Bits(128, 0));
  one[0][0] = one[0][9] = one[0][64] = one[0][127] = 1;
  const auto p = pack(one, 2);
  CHECK(p[0] == ((uint64_t(1) << 0) | (uint64_t(1) << 9)), "word0=%llx", (unsigned long long)p[0]);
  CHECK(p[1] == ((uint64_t(1) << 0) | (uint64_t(1) << 63)), "word1=%llx", (unsigned long long)p[1]);
  const auto* bytes = reinterpret_cast<const uint8_t*>(p.data());
  CHECK(bytes[0] == 1 && bytes[1] == 2 && bytes[8] == 1 && bytes[15] == 0x80, "byte layout");
}

static void test_distances(std::mt19937_64& rng) {
  const std::vector<std::vector<int64_t>> lengths = {
      {1}, {8}, {12, 48}, {8, 16, 32, 64}, {8, 16, 32, 64, 128}, {64, 65, 100, 127, 128}, {3, 100, 200, 256}};
  for (const auto& bl : lengths) {
    const int bmax = static_cast<int>(bl.back()), W = nhl::words_for_bits(bmax) + 1;  // a spare word
    auto codes = random_codes(rng, 40, W * 64, 0);
    const auto packed = pack(codes, W);
    nhl::LengthPlan plan(bl.data(), static_cast<int>(bl.size()));
    std::vector<int32_t> d(bl.size());
    for (int i = 0; i < 40; ++i)
      for (int j = 0; j < 40; ++j) {
        if (plan.words == 1) nhl::distances<1>(&packed[i * W], &packed[j * W], plan, d.data());
        else if (plan.words == 2) nhl::distances<2>(&packed[i * W], &packed[j * W], plan, d.data());
        else nhl::distances<0>(&packed[i * W], &packed[j * W], plan, d.data());
        for (size_t l = 0; l < bl.size(); ++l)
          CHECK(d[l] == brute_distance(codes[i], codes[j], static_cast<int>(bl[l])), "b=%d", (int)bl[l]);
      }
    // full matrix block (L, Q, N)
    const int Q = 7, N = 40;
    for (int simd = 0; simd < 2; ++simd) {
      std::vector<int32_t> out(bl.size() * Q * N, -1);
      nhl::hamming_block_any(packed.data(), packed.data(), W, Q, N, plan, 0, Q, 0, N, out.data(), simd == 1);
      for (size_t l = 0; l < bl.size(); ++l)
        for (int i = 0; i < Q; ++i)
          for (int j = 0; j < N; ++j)
            CHECK(out[(l * Q + i) * N + j] == brute_distance(codes[i], codes[j], static_cast<int>(bl[l])),
                  "matrix simd=%d b=%d", simd, (int)bl[l]);
    }
  }
}

static void test_nibble_transpose(std::mt19937_64& rng) {
#if defined(__AVX2__)
  for (int WU = 1; WU <= 2; ++WU)
    for (int count : {32, 17, 1}) {
      const int W = 3;
      std::vector<uint64_t> rows(32 * W);
      for (auto& x : rows) x = rng();
      alignas(32) uint8_t out[32 * 32];
      if (WU == 1) nhl::avx2::transpose_group<1>(rows.data(), W, count, out);
      else nhl::avx2::transpose_group<2>(rows.data(), W, count, out);
      for (int u = 0; u < 16 * WU; ++u)
        for (int lane = 0; lane < 32; ++lane) {
          const uint8_t want = lane < count ? (rows[lane * W + u / 16] >> (4 * (u % 16))) & 15 : 0;
          CHECK(out[u * 32 + lane] == want, "WU=%d count=%d u=%d lane=%d", WU, count, u, lane);
        }
    }
#else
  (void)rng;
  std::printf("note: no AVX2 in this build: nibble transpose not tested\n");
#endif
}

static void test_selection(std::mt19937_64& rng) {
  for (int t = 0; t < 300; ++t) {
    const int n = 1 + rng() % 300, k = 1 + rng() % n, max_d = 1 + rng() % 20;
    std::vector<int32_t> d(n);
    std::vector<int64_t> idx(n);
    for (int i = 0; i < n; ++i) d[i] = rng() % (max_d + 1), idx[i] = 3 * i + 1;
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return d[a] < d[b]; });
    std::vector<int64_t> hist(max_d + 2);
    auto dd = d;
    auto ii = idx;
    int64_t m = n;
    const int kth = nhl::select_smallest(dd.data(), ii.data(), m, k, max_d, hist.data());
    CHECK(m == k, "kept %lld of k=%d", (long long)m, k);
    CHECK(kth == d[order[k - 1]], "kth");
    for (int64_t i = 1; i < m; ++i) CHECK(ii[i - 1] < ii[i], "selection must keep index order");
    std::vector<int32_t> od(m);
    std::vector<int64_t> oi(m);
    nhl::sort_by_distance(dd.data(), ii.data(), m, max_d, hist.data(), od.data(), oi.data());
    for (int i = 0; i < k; ++i) {
      CHECK(od[i] == d[order[i]], "t=%d i=%d dist", t, i);
      CHECK(oi[i] == idx[order[i]], "t=%d i=%d idx", t, i);
    }
  }
}

// Full scan vs brute force: stable sort of every length's distances.
static void test_topk_scan(std::mt19937_64& rng) {
  struct Case {
    std::vector<int64_t> bits;
    int Q, N, k, distinct;
  };
  const std::vector<Case> cases = {
      {{8, 16, 32, 64, 128}, 5, 1000, 10, 0},  {{8, 16, 32, 64, 128}, 3, 777, 50, 6},
      {{12, 48, 100}, 4, 513, 7, 0},           {{1}, 2, 100, 100, 0},
      {{64}, 3, 4099, 1, 3},                   {{7, 13, 31, 33, 63}, 3, 300, 20, 0},
      {{100, 256}, 2, 200, 9, 4},              {{128}, 1, 5, 5, 2},
      {{8, 16, 32, 64, 128}, 2, 2000, 40, 0},  {{5, 127}, 3, 97, 97, 0},
      {{8, 16, 32, 64, 128}, 4, 5000, 100, 0}, {{8, 16, 32, 64, 128}, 2, 4000, 60, 200},
      {{64}, 3, 3000, 500, 0},
      // uint8 record distances up to 255 (thresholds of 256 while k = N), and 64 lengths
      {{64, 200, 255}, 2, 150, 150, 0},        {{64, 200, 255}, 3, 300, 7, 3},
      {[] { std::vector<int64_t> b; for (int i = 2; i <= 128; i += 2) b.push_back(i); return b; }(), 2, 700, 30, 5},
  };
  // warm: 0 = defaults (no sample on small N), 1 = sampled start thresholds, 2 = a sample
  // margin so small that lists come up short and their queries are rescanned (the fallback).
  // records: 0 = CandidateLists (scanned with the AVX-512 filter where the CPU has it), 1 =
  // RecordLists on the AVX2 filter and appends, 2 = RecordLists on the AVX-512 filter and
  // compress appends where the CPU has them (the scan follows RecordLists::wide).
  for (const auto& c : cases)
    for (int records = 0; records < 3; ++records)
    for (int cap_mode = 0; cap_mode < 2; ++cap_mode)
      for (int simd = 0; simd < 2; ++simd)
        for (int split = 0; split < 2; ++split)
          for (int warm = 0; warm < 3; ++warm) {
          if (warm && !simd) continue;
          const int bmax = static_cast<int>(c.bits.back()), W = nhl::words_for_bits(bmax);
          if (records && bmax > 255) continue;  // uint8 record distances
          if (records == 2 && !nhl::records_avx512()) continue;
          auto db = random_codes(rng, c.N, W * 64, c.distinct);
          auto qs = random_codes(rng, c.Q, W * 64, 0);
          if (c.distinct) qs[0] = db[c.N / 2];  // exact matches and ties at distance 0
          const auto pdb = pack(db, W), pq = pack(qs, W);
          nhl::LengthPlan plan(c.bits.data(), static_cast<int>(c.bits.size()));
          nhl::TopkScanArgs args{pq.data(), pdb.data(), W, &plan};
          if (warm) args.sample_min_rows = 0, args.sample_every = 2, args.sample_margin = warm == 1 ? 1.5 : 0.01;
          const int L = plan.L;
          // split: two database halves scanned separately, candidates concatenated, then selected
          std::vector<std::vector<int32_t>> gd(c.Q * L);
          std::vector<std::vector<int64_t>> gi(c.Q * L);
          const int parts = split ? 2 : 1;
          std::vector<std::vector<int32_t>> sd(c.Q * L);
          std::vector<std::vector<int64_t>> si(c.Q * L);
          // records: RecordLists (one record list per query; its tightest cap = L k + 1
          // compacts constantly) instead of CandidateLists (cap k + 1 for the per-length lists).
          auto scan_part = [&](auto& lists, int64_t n0, int64_t n1) {
            nhl::topk_scan(args, 0, c.Q, n0, n1, lists, simd == 1);
            std::vector<int32_t> ed(c.k);
            std::vector<int64_t> ei(c.k);
            for (int i = 0; i < c.Q * L; ++i) {
              const int64_t m = lists.extract(i, ed.data(), ei.data());
              gd[i].insert(gd[i].end(), ed.data(), ed.data() + m);
              gi[i].insert(gi[i].end(), ei.data(), ei.data() + m);
              if (parts == 1) {  // the lists' own sorted output, checked below
                sd[i].resize(m), si[i].resize(m);
                lists.emit_sorted(i, sd[i].data(), si[i].data());
              }
            }
          };
          for (int p = 0; p < parts; ++p) {
            const int64_t n0 = int64_t(c.N) * p / parts, n1 = int64_t(c.N) * (p + 1) / parts;
            if (records) {
              nhl::RecordLists lists;
              lists.reset(c.Q, c.k, plan.bits, cap_mode ? int64_t(L) * c.k + 1 : 0, n0);
              lists.wide = records == 2;
              scan_part(lists, n0, n1);
            } else {
              nhl::CandidateLists lists;
              lists.reset(c.Q, c.k, plan.bits, cap_mode ? c.k + 1 : 0);
              scan_part(lists, n0, n1);
            }
          }
          std::vector<int64_t> hist(bmax + 2);
          for (int i = 0; i < c.Q; ++i)
            for (int l = 0; l < L; ++l) {
              auto& d = gd[i * L + l];
              auto& ix = gi[i * L + l];
              int64_t m = static_cast<int64_t>(d.size());
              nhl::select_smallest(d.data(), ix.data(), m, c.k, bmax, hist.data());
              CHECK(m == c.k, "kept %lld", (long long)m);
              std::vector<int32_t> od(m);
              std::vector<int64_t> oi(m);
              nhl::sort_by_distance(d.data(), ix.data(), m, bmax, hist.data(), od.data(), oi.data());
              std::vector<int> bd(c.N), order(c.N);
              for (int j = 0; j < c.N; ++j) bd[j] = brute_distance(qs[i], db[j], static_cast<int>(c.bits[l]));
              std::iota(order.begin(), order.end(), 0);
              std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return bd[a] < bd[b]; });
              for (int r = 0; r < c.k && r < m; ++r) {
                CHECK(od[r] == bd[order[r]], "rec=%d b=%d Q=%d N=%d k=%d simd=%d split=%d warm=%d rank %d dist %d want %d",
                      records, (int)c.bits[l], c.Q, c.N, c.k, simd, split, warm, r, od[r], bd[order[r]]);
                if (parts == 1)
                  CHECK(sd[i * L + l][r] == od[r] && si[i * L + l][r] == oi[r], "emit_sorted rec=%d b=%d rank %d",
                        records, (int)c.bits[l], r);
                CHECK(oi[r] == order[r], "rec=%d b=%d N=%d k=%d simd=%d split=%d rank %d idx %lld want %d", records, (int)c.bits[l],
                      c.N, c.k, simd, split, r, (long long)oi[r], order[r]);
              }
            }
        }
}

int main() {
  std::mt19937_64 rng(12345);
  test_popcount_and_masks(rng);
  test_packing_convention();
  test_distances(rng);
  test_nibble_transpose(rng);
  test_selection(rng);
  test_topk_scan(rng);
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all kernel checks passed\n");
  return 0;
}
