// The running top-k of an exact kNN scan on the CPU: one block of scores [R, w] (float32 or bfloat16, rows with a
// stride) merged into each row's best k so far. A row is read twice while it sits in L1/L2:
// 1. the maxima of M strided groups (column j in group j % M, M >= 2k), and their k-th largest t: k groups hold
//    a score >= t each, so the row's k-th best is >= t (as is the k-th best carried from earlier blocks);
// 2. every score >= t is appended to a candidate buffer, branch-free (the compare's mask compresses the chunk
//    in registers); on random scores about 1.4k enter (1.15k with M = 4k, whose selection costs more). A
//    buffer past 4k (rows built against a threshold: ascending, ties) is cut back to its best k.
// The best k of the candidates are written, sorted or not. The PyTorch paths (torch_impl.py: block_topk;
// reference.py) are the oracle: the same scores, ties broken either way. rerank_topk re-scores candidates.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t LANES = 16;

inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float load_one(const float* x, int64_t j) { return x[j]; }
inline float load_one(const at::BFloat16* x, int64_t j) {
  return bf16_to_float(reinterpret_cast<const uint16_t*>(x)[j]);
}

#if defined(__AVX512F__)
inline __m512 load16(const float* x) { return _mm512_loadu_ps(x); }
inline __m512 load16(const at::BFloat16* x) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#endif
#if defined(__AVX2__) && !defined(__AVX512F__)
// AVX2 (no compress instruction): 8 lanes compared at once; a chunk with a hit (rare once the threshold is set:
// about 1.4k of a row's scores) appends its hits one by one
inline __m256 load8(const float* x) { return _mm256_loadu_ps(x); }
inline __m256 load8(const at::BFloat16* x) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#endif

// one row's candidates: scores >= thr and their block columns (at most cap + LANES)
struct Row {
  std::vector<float> v, tmp, acc;
  std::vector<int32_t> s;
  std::vector<uint64_t> packed;
  int64_t k, cap, groups, n = 0;
  float thr = -FLT_MAX;  // -inf never enters (dead slots, padding)

  Row(int64_t k_, int64_t groups_)
      : v(4 * k_ + LANES), tmp(std::max(4 * k_, groups_) + LANES), acc(groups_), s(4 * k_ + LANES),
        packed(4 * k_ + LANES), k(k_), cap(4 * k_), groups(groups_) {}

  void reset() {
    n = 0;
    thr = -FLT_MAX;
  }

  // the k-th largest of the first m values of src, m >= k (tmp is overwritten)
  float kth(const float* src, int64_t m) {
    std::copy(src, src + m, tmp.begin());
    std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.begin() + m, std::greater<float>());
    return tmp[k - 1];
  }

  // keep the best k of the buffer (those above the k-th best, then ties up to k); the threshold rises to it
  void cut() {
    if (n < k) return;
    if (n == k) {  // nothing to drop; the threshold rises to the smallest kept
      thr = std::max(thr, *std::min_element(v.begin(), v.begin() + n));
      return;
    }
    const float t = kth(v.data(), n);
    int64_t above = 0;
    for (int64_t i = 0; i < n; ++i) above += v[i] > t;
    int64_t m = 0, ties = k - above;
    for (int64_t i = 0; i < n; ++i) {
      const bool keep = v[i] > t || (v[i] == t && ties-- > 0);
      v[m] = v[i], s[m] = s[i], m += keep;
    }
    n = m;
    thr = std::max(thr, t);
  }

  inline void push(float x, int32_t col) {
    v[n] = x, s[n] = col, n += x >= thr;
    if (n >= cap) cut();
  }

  // pass 1: the threshold from the maxima of strided groups over the row's first (m / groups) * groups columns
  template <typename T>
  void group_threshold(const T* x, int64_t m) {
    const int64_t full = m / groups;
    if (full < 2) return;  // a short row: every score is a candidate
    std::fill(acc.begin(), acc.end(), -std::numeric_limits<float>::infinity());
    for (int64_t c = 0; c < full; ++c) {
      const T* xc = x + c * groups;
      int64_t i = 0;
#if defined(__AVX512F__)
      for (; i + LANES <= groups; i += LANES)
        _mm512_storeu_ps(acc.data() + i, _mm512_max_ps(_mm512_loadu_ps(acc.data() + i), load16(xc + i)));
#elif defined(__AVX2__)
      for (; i + 8 <= groups; i += 8)
        _mm256_storeu_ps(acc.data() + i, _mm256_max_ps(_mm256_loadu_ps(acc.data() + i), load8(xc + i)));
#endif
      for (; i < groups; ++i) acc[i] = std::max(acc[i], load_one(xc, i));
    }
    thr = std::max(thr, kth(acc.data(), groups));
  }

  // pass 2: every score >= thr joins the candidates
  template <typename T>
  void scan(const T* x, int64_t m) {
    int64_t j = 0;
#if defined(__AVX512F__)
    __m512 t = _mm512_set1_ps(thr);
    __m512i col = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step = _mm512_set1_epi32(LANES);
    for (; j + LANES <= m; j += LANES) {
      const __m512 xs = load16(x + j);
      const __mmask16 hit = _mm512_cmp_ps_mask(xs, t, _CMP_GE_OQ);
      // compress in registers and store whole vectors (a masked compress-store to memory is slow on some CPUs)
      _mm512_storeu_ps(v.data() + n, _mm512_maskz_compress_ps(hit, xs));
      _mm512_storeu_si512(s.data() + n, _mm512_maskz_compress_epi32(hit, col));
      n += __builtin_popcount(hit);
      col = _mm512_add_epi32(col, step);
      if (n >= cap) {
        cut();
        t = _mm512_set1_ps(thr);
      }
    }
#elif defined(__AVX2__)
    __m256 t = _mm256_set1_ps(thr);
    for (; j + 8 <= m; j += 8) {
      int hit = _mm256_movemask_ps(_mm256_cmp_ps(load8(x + j), t, _CMP_GE_OQ));
      if (!hit) continue;
      while (hit) {  // the chunk's hits against the threshold it was compared with, as the AVX-512 path
        const int b = __builtin_ctz(hit);
        hit &= hit - 1;
        v[n] = load_one(x, j + b), s[n] = static_cast<int32_t>(j + b), ++n;
      }
      if (n >= cap) {
        cut();
        t = _mm256_set1_ps(thr);
      }
    }
#endif
    for (; j < m; ++j) push(load_one(x, j), static_cast<int32_t>(j));
  }

  // the best k, sorted by score (descending) or in any order, as slots lo + column; padded with -inf at slot 0.
  // Each candidate is packed into one integer ordered as its score (no comparator indirection in the sort)
  void write(int64_t lo, float* ov, int64_t* os, bool sorted = true) {
    for (int64_t i = 0; i < n; ++i) {
      uint32_t u;
      std::memcpy(&u, &v[i], 4);
      u ^= (u >> 31) ? 0xFFFFFFFFu : 0x80000000u;
      packed[i] = (static_cast<uint64_t>(u) << 32) | static_cast<uint32_t>(s[i]);
    }
    const int64_t m = std::min(n, k);
    if (n > k) std::nth_element(packed.begin(), packed.begin() + (k - 1), packed.begin() + n, std::greater<uint64_t>());
    if (sorted) std::sort(packed.begin(), packed.begin() + m, std::greater<uint64_t>());
    for (int64_t i = 0; i < m; ++i) {
      uint32_t u = static_cast<uint32_t>(packed[i] >> 32);
      u ^= (u >> 31) ? 0x80000000u : 0xFFFFFFFFu;
      std::memcpy(&ov[i], &u, 4);
      os[i] = lo + static_cast<int32_t>(static_cast<uint32_t>(packed[i]));
    }
    for (int64_t i = m; i < k; ++i) ov[i] = -std::numeric_limits<float>::infinity(), os[i] = 0;
  }
};

template <typename T>
void merge_impl(const torch::Tensor& scores, int64_t lo, const torch::Tensor& limit, const torch::Tensor& prev_v,
                const torch::Tensor& prev_s, int64_t k, bool sorted, torch::Tensor& out_v,
                torch::Tensor& out_s) {
  const int64_t R = scores.size(0), w = scores.size(1), stride = scores.stride(0);
  const T* sp = scores.data_ptr<T>();
  const int64_t* lp = limit.data_ptr<int64_t>();
  const int64_t kp = prev_v.size(1);
  const float* pv = kp ? prev_v.data_ptr<float>() : nullptr;
  const int64_t* ps = kp ? prev_s.data_ptr<int64_t>() : nullptr;
  float* ov = out_v.data_ptr<float>();
  int64_t* os = out_s.data_ptr<int64_t>();
  const int64_t groups = std::max<int64_t>(32, (2 * k + LANES - 1) / LANES * LANES);
  at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
    Row row(k, groups);
    for (int64_t r = r0; r < r1; ++r) {
      row.reset();
      for (int64_t i = 0; i < kp; ++i) row.push(pv[r * kp + i], static_cast<int32_t>(ps[r * kp + i] - lo));
      row.cut();  // the best k so far: their k-th is a threshold at once
      const int64_t m = std::min(w, std::max<int64_t>(0, lp[r]));
      const T* x = sp + r * stride;
      row.group_threshold(x, m);
      row.scan(x, m);
      row.write(lo, ov + r * k, os + r * k, sorted);
    }
  });
}

template <typename T>
void rerank_impl(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& cand_v,
                 const torch::Tensor& cand_s, int64_t k, torch::Tensor& out_v, torch::Tensor& out_s) {
  const int64_t G = q.size(0), Tq = q.size(1), d = q.size(2), C = keys.size(1), m = cand_s.size(1);
  const float* qp = q.data_ptr<float>();
  const float* kp = keys.data_ptr<float>();
  const T* cv = cand_v.data_ptr<T>();
  const int64_t* cs = cand_s.data_ptr<int64_t>();
  float* ov = out_v.data_ptr<float>();
  int64_t* os = out_s.data_ptr<int64_t>();
  const float neg_inf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, G * Tq, 16, [&](int64_t r0, int64_t r1) {
    Row row(k, 1);
    for (int64_t r = r0; r < r1; ++r) {
      row.reset();
      const float* qr = qp + r * d;
      const float* kg = kp + (r / Tq) * C * d;
      for (int64_t i = 0; i < m; ++i) {
        if (!(static_cast<float>(cv[r * m + i]) > neg_inf)) continue;  // an empty candidate
        const int64_t slot = cs[r * m + i];
        TORCH_CHECK(slot >= 0 && slot < C, "rerank_topk: candidate slot ", slot, " outside [0, ", C, ")");
        const float* kr = kg + slot * d;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < d; ++j) dot += qr[j] * kr[j];
        row.v[row.n] = dot, row.s[row.n] = static_cast<int32_t>(slot), ++row.n;
        if (row.n >= row.cap) row.cut();
      }
      row.write(0, ov + r * k, os + r * k);
    }
  });
}

}  // namespace

// scores [R, w] float32 or bfloat16 (unit stride along w); limit [R] int64: columns of the row to read (the rest
// are dead slots); prev_v [R, kp] float32 and prev_s [R, kp] int64: the best so far (kp = 0: none), -inf entries
// skipped. Returns the best k of prev and the block, values [R, k] float32 (descending if sorted, else in any
// order; -inf padded) and slots [R, k] int64 (a block column j is slot lo + j).
std::vector<torch::Tensor> topk_merge(torch::Tensor scores, int64_t lo, torch::Tensor limit, torch::Tensor prev_v,
                                      torch::Tensor prev_s, int64_t k, bool sorted) {
  TORCH_CHECK(scores.dim() == 2 && scores.stride(1) == 1, "scores: [R, w] with unit stride along w");
  TORCH_CHECK(k >= 1, "k >= 1");
  TORCH_CHECK(lo >= 0 && lo + scores.size(1) < (int64_t(1) << 31), "slots lo .. lo + w must stay below 2^31");
  TORCH_CHECK(limit.scalar_type() == torch::kInt64 && limit.is_contiguous() && limit.numel() == scores.size(0),
              "limit: contiguous int64 [R]");
  TORCH_CHECK(prev_v.dim() == 2 && prev_v.size(0) == scores.size(0) && prev_v.is_contiguous() &&
                  prev_v.scalar_type() == torch::kFloat32 && prev_s.sizes() == prev_v.sizes() &&
                  prev_s.is_contiguous() && prev_s.scalar_type() == torch::kInt64,
              "prev_v float32 / prev_s int64: contiguous [R, kp]");
  const int64_t R = scores.size(0);
  auto out_v = torch::empty({R, k}, scores.options().dtype(torch::kFloat32));
  auto out_s = torch::empty({R, k}, scores.options().dtype(torch::kInt64));
  if (scores.scalar_type() == torch::kFloat32) {
    merge_impl<float>(scores, lo, limit, prev_v, prev_s, k, sorted, out_v, out_s);
  } else {
    TORCH_CHECK(scores.scalar_type() == torch::kBFloat16, "scores: float32 or bfloat16");
    merge_impl<at::BFloat16>(scores, lo, limit, prev_v, prev_s, k, sorted, out_v, out_s);
  }
  return {out_v, out_s};
}

// q [G, T, d] and keys [G, C, d] float32 contiguous; cand_v [G * T, m] (float32 or bfloat16; -inf: empty) and
// cand_s [G * T, m] int64: candidate slots of row r in keys[r / T]. Returns the best k of the candidates by their
// float32 scores q . key: values [G * T, k] float32 descending (-inf padded) and slots [G * T, k] int64 (0 where
// empty).
std::vector<torch::Tensor> rerank_topk(torch::Tensor q, torch::Tensor keys, torch::Tensor cand_v, torch::Tensor cand_s,
                                       int64_t k) {
  TORCH_CHECK(q.dim() == 3 && keys.dim() == 3 && q.size(0) == keys.size(0) && q.size(2) == keys.size(2),
              "q [G, T, d], keys [G, C, d]");
  TORCH_CHECK(q.scalar_type() == torch::kFloat32 && keys.scalar_type() == torch::kFloat32 && q.is_contiguous() &&
                  keys.is_contiguous(), "q, keys: contiguous float32");
  TORCH_CHECK(cand_s.dim() == 2 && cand_s.size(0) == q.size(0) * q.size(1) && cand_s.is_contiguous() &&
                  cand_s.scalar_type() == torch::kInt64 && cand_v.sizes() == cand_s.sizes() && cand_v.is_contiguous(),
              "cand_v, cand_s: contiguous [G * T, m], slots int64");
  TORCH_CHECK(k >= 1 && keys.size(1) < (int64_t(1) << 31), "k >= 1, fewer than 2^31 slots");
  const int64_t R = cand_s.size(0);
  auto out_v = torch::empty({R, k}, q.options());
  auto out_s = torch::empty({R, k}, cand_s.options());
  if (cand_v.scalar_type() == torch::kFloat32) {
    rerank_impl<float>(q, keys, cand_v, cand_s, k, out_v, out_s);
  } else {
    TORCH_CHECK(cand_v.scalar_type() == torch::kBFloat16, "cand_v: float32 or bfloat16");
    rerank_impl<at::BFloat16>(q, keys, cand_v, cand_s, k, out_v, out_s);
  }
  return {out_v, out_s};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("topk_merge", &topk_merge, "running top-k of a block of scores");
  m.def("rerank_topk", &rerank_topk, "the best k candidates by their float32 scores");
}
