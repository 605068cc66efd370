// Brute-force checks of the CUDA engine launchers (pack, unpack, hamming, topk) run under the CPU
// simulator (see run.sh, which builds this driver against three shrunken topk variants).
#include <algorithm>
#include <numeric>
#include <random>

#include "check.h"
#include "cuda/launchers.h"

int dist_ref(const int64_t* a, const int64_t* b, int64_t bits) {
  int d = 0;
  for (int64_t j = 0; j < bits; ++j) d += (((uint64_t)a[j / 64] ^ (uint64_t)b[j / 64]) >> (j % 64)) & 1;
  return d;
}

void test_case(int64_t nq, int64_t ndb, int64_t words, std::vector<int64_t> bits, int64_t k, int distinct, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> pool(distinct);
  for (auto& x : pool) x = (int64_t)rng();
  std::vector<int64_t> q(nq * words), db(ndb * words);
  auto fill = [&](std::vector<int64_t>& v) { for (auto& x : v) x = distinct ? pool[rng() % distinct] : (int64_t)rng(); };
  fill(q); fill(db);
  const int64_t L = bits.size();
  // hamming, into a 16-byte aligned output (vector stores when ndb % 4 == 0) and a misaligned one
  for (int shift : {0, 1}) {
    std::vector<int32_t> buf(L * nq * ndb + 8, -7);
    int32_t* H = reinterpret_cast<int32_t*>((reinterpret_cast<uintptr_t>(buf.data()) + 15) / 16 * 16) + shift;
    CHECK(nhl_hamming_cuda(q.data(), db.data(), nq, ndb, words, bits.data(), L, H, nullptr) == cudaSuccess, "ham rc");
    for (int64_t l = 0; l < L; ++l) for (int64_t i = 0; i < nq; ++i) for (int64_t j = 0; j < ndb; ++j)
      CHECK(H[(l * nq + i) * ndb + j] == dist_ref(&q[i * words], &db[j * words], bits[l]), "hamming shift=%d l=%ld i=%ld j=%ld", shift, l, i, j);
    CHECK(H[L * nq * ndb] == -7, "hamming wrote past its output (shift=%d)", shift);
  }
  // topk
  size_t ws = nhl_topk_cuda_workspace_bytes(nq, ndb, words, bits.data(), L, k);
  std::vector<unsigned char> wsb(ws + 1, 0xCD);
  std::vector<int32_t> D(L * nq * k, -7); std::vector<int64_t> I(L * nq * k, -7);
  CHECK(nhl_topk_cuda(q.data(), db.data(), nq, ndb, words, bits.data(), L, k, D.data(), I.data(), wsb.data(), ws, nullptr) == cudaSuccess, "topk rc");
  for (int64_t l = 0; l < L; ++l) for (int64_t i = 0; i < nq; ++i) {
    std::vector<int> d(ndb); std::vector<int64_t> o(ndb);
    for (int64_t j = 0; j < ndb; ++j) d[j] = dist_ref(&q[i * words], &db[j * words], bits[l]);
    std::iota(o.begin(), o.end(), 0);
    std::stable_sort(o.begin(), o.end(), [&](int64_t a, int64_t b) { return d[a] < d[b]; });
    for (int64_t r = 0; r < k; ++r) {
      const int64_t at = (l * nq + i) * k + r;
      CHECK(I[at] == o[r] && D[at] == d[o[r]], "topk nq=%ld ndb=%ld k=%ld l=%ld i=%ld r=%ld got (%d,%ld) want (%d,%ld)", nq, ndb, k, l, i, r, D[at], I[at], d[o[r]], o[r]);
    }
  }
}

void test_pack_unpack(int64_t n, int64_t bits, unsigned seed) {
  std::mt19937 rng(seed);
  const int64_t W = (bits + 63) / 64;
  std::vector<float> c(n * bits); for (auto& x : c) x = (int)(rng() % 3) - 1.f;  // includes 0 -> bit off
  std::vector<int64_t> p(n * W, -7);
  CHECK(nhl_pack_cuda(c.data(), NHL_CODES_F32, n, bits, p.data(), nullptr) == 0, "pack rc");
  for (int64_t i = 0; i < n; ++i) for (int64_t w = 0; w < W; ++w) {
    uint64_t want = 0; for (int64_t j = w * 64; j < std::min(bits, w * 64 + 64); ++j) if (c[i * bits + j] > 0) want |= 1ull << (j - w * 64);
    CHECK((uint64_t)p[i * W + w] == want, "pack n=%ld bits=%ld i=%ld w=%ld", n, bits, i, w);
  }
  std::vector<float> u(n * bits, 7);
  CHECK(nhl_unpack_cuda(p.data(), n, W, bits, u.data(), nullptr) == 0, "unpack rc");
  for (int64_t e = 0; e < n * bits; ++e) CHECK(u[e] == (c[e] > 0 ? 1.f : -1.f), "unpack e=%ld", e);
}

int main(int argc, char** argv) {
  simcheck::parse_args(argc, argv);
  test_pack_unpack(3, 130, 1);
  test_pack_unpack(9, 64, 2);
  test_pack_unpack(1, 1, 3);
  test_case(1, 1, 1, {1, 64}, 1, 0, 1);
  if (simcheck::quick) {  // one case per topk path: bound, chunks + ties, groups, batches
    test_case(9, 200, 2, {8, 16, 64, 65, 128}, 7, 0, 3);
    test_case(10, 300, 1, {3, 64}, 150, 3, 5);
    test_case(5, 130, 3, {1, 2, 3, 4, 70, 130, 191, 192}, 33, 2, 6);
    test_case(17, 129, 2, {33, 100}, 64, 0, 8);
    return simcheck::finish("engine");
  }
  test_case(3, 5, 2, {1, 12, 48, 100, 128}, 5, 0, 2);
  test_case(9, 200, 2, {8, 16, 64, 65, 128}, 7, 0, 3);         // 2 query tiles, 4 chunks (sim chunk = 64); bound (sim sample = 64)
  test_case(9, 200, 2, {8, 16, 64, 65, 128}, 200, 0, 4);       // k = N
  test_case(10, 300, 1, {3, 64}, 150, 3, 5);                   // heavy ties, 3 distinct codes
  test_case(5, 130, 3, {1, 2, 3, 4, 70, 130, 191, 192}, 33, 2, 6);  // > kMaxLengths (sim 3): groups; ties
  test_case(2, 70, 1, {64}, 70, 1, 7);                         // all equal
  test_case(6, 300, 1, {3, 64}, 20, 3, 9);                     // bound (pass 0) with heavy ties
  test_case(17, 129, 2, {33, 100}, 64, 0, 8);                  // batches (sim budget)
  return simcheck::finish("engine");
}
