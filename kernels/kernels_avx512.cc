// AVX-512 kernels: 8x32 register tile (16 accumulators of 16 floats), two panels per work item.
#include <immintrin.h>

#include "kernels/kernels_impl.h"

namespace moe::avx512 {
namespace {

inline __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 Load16(const uint16_t* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

struct Micro {
  static constexpr int kMaxRows = 8;
  static constexpr int kPanelsPerItem = 2;

  template <int kRows, int kPanels, typename W>
  static void Tile(const float* x, int64_t ldx, const W* w, int64_t panel_stride, int64_t k_count, float* y,
                   int64_t ldy, bool accumulate) {
    __m512 acc[kRows][kPanels];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 2
      for (int p = 0; p < kPanels; ++p) {
        acc[r][p] = accumulate ? _mm512_loadu_ps(y + r * ldy + p * kPanelWidth) : _mm512_setzero_ps();
      }
    }
    for (int64_t k = 0; k < k_count; ++k) {
      __m512 wv[kPanels];
#pragma GCC unroll 2
      for (int p = 0; p < kPanels; ++p) wv[p] = Load16(w + p * panel_stride + k * kPanelWidth);
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        const __m512 xv = _mm512_set1_ps(x[r * ldx + k]);
#pragma GCC unroll 2
        for (int p = 0; p < kPanels; ++p) acc[r][p] = _mm512_fmadd_ps(xv, wv[p], acc[r][p]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 2
      for (int p = 0; p < kPanels; ++p) _mm512_storeu_ps(y + r * ldy + p * kPanelWidth, acc[r][p]);
    }
  }
};

float DotImpl(const float* a, const float* b, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
  }
  if (i < n) {  // masked tail
    for (; i < n; i += 16) {
      const __mmask16 m = n - i >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
      s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

void AxpyImpl(float alpha, const float* x, float* y, int64_t n) {
  const __m512 a = _mm512_set1_ps(alpha);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

void AddProductImpl(float alpha, const float* x, float* y, int64_t n) {
  const __m512 a = _mm512_set1_ps(alpha);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 product = kernels_impl::Opaque(_mm512_mul_ps(a, _mm512_maskz_loadu_ps(m, x + i)));
    _mm512_mask_storeu_ps(y + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + i), product));
  }
}

}  // namespace

extern const KernelTable kTable;
const KernelTable kTable{Micro::kPanelsPerItem, &kernels_impl::MatMulItemsAnyType<Micro>, &DotImpl, &AxpyImpl,
                         &AddProductImpl};

}  // namespace moe::avx512
