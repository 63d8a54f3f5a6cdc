// AVX2 + FMA kernels: 6x16 register tile (12 accumulators of 8 floats).
#include <immintrin.h>

#include "kernels/kernels_impl.h"

namespace moe::avx2 {
namespace {

inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 Load8(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

struct Micro {
  static constexpr int kMaxRows = 6;
  static constexpr int kPanelsPerItem = 1;

  template <int kRows, int kPanels, typename W>
  static void Tile(const float* x, int64_t ldx, const W* w, int64_t panel_stride, int64_t k_count, float* y,
                   int64_t ldy, bool accumulate) {
    static_assert(kPanels == 1);
    __m256 acc[kRows][2];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      acc[r][0] = accumulate ? _mm256_loadu_ps(y + r * ldy) : _mm256_setzero_ps();
      acc[r][1] = accumulate ? _mm256_loadu_ps(y + r * ldy + 8) : _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < k_count; ++k) {
      const __m256 w0 = Load8(w + k * kPanelWidth);
      const __m256 w1 = Load8(w + k * kPanelWidth + 8);
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        const __m256 xv = _mm256_broadcast_ss(x + r * ldx + k);
        acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      _mm256_storeu_ps(y + r * ldy, acc[r][0]);
      _mm256_storeu_ps(y + r * ldy + 8, acc[r][1]);
    }
  }
};

float DotImpl(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  s0 = _mm256_add_ps(s0, s1);
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  float s = _mm_cvtss_f32(q);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void AxpyImpl(float alpha, const float* x, float* y, int64_t n) {
  const __m256 a = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

void AddProductImpl(float alpha, const float* x, float* y, int64_t n) {
  const __m256 a = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), kernels_impl::Opaque(_mm256_mul_ps(a, _mm256_loadu_ps(x + i)))));
  }
  for (; i < n; ++i) y[i] += kernels_impl::Opaque(alpha * x[i]);
}

}  // namespace

extern const KernelTable kTable;
const KernelTable kTable{Micro::kPanelsPerItem, &kernels_impl::MatMulItemsAnyType<Micro>, &DotImpl, &AxpyImpl,
                         &AddProductImpl};

}  // namespace moe::avx2
