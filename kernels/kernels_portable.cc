// Kernels in plain C++ for any x86-64 CPU (the compiler may vectorize them with the baseline SSE2).
#include "kernels/kernels_impl.h"

namespace moe::portable {
namespace {

inline float Widen(float v) { return v; }
inline float Widen(uint16_t v) { return Bf16ToFloat(v); }

struct Micro {
  static constexpr int kMaxRows = 4;
  static constexpr int kPanelsPerItem = 1;

  template <int kRows, int kPanels, typename W>
  static void Tile(const float* x, int64_t ldx, const W* w, int64_t panel_stride, int64_t k_count, float* y,
                   int64_t ldy, bool accumulate) {
    constexpr int kCols = kPanels * kPanelWidth;
    float acc[kRows][kCols];
    for (int r = 0; r < kRows; ++r) {
      for (int c = 0; c < kCols; ++c) acc[r][c] = accumulate ? y[r * ldy + c] : 0.0f;
    }
    for (int64_t k = 0; k < k_count; ++k) {
      float wv[kCols];
      for (int p = 0; p < kPanels; ++p) {
        for (int j = 0; j < kPanelWidth; ++j) wv[p * kPanelWidth + j] = Widen(w[p * panel_stride + k * kPanelWidth + j]);
      }
      for (int r = 0; r < kRows; ++r) {
        const float xv = x[r * ldx + k];
        for (int c = 0; c < kCols; ++c) acc[r][c] += xv * wv[c];
      }
    }
    for (int r = 0; r < kRows; ++r) {
      for (int c = 0; c < kCols; ++c) y[r * ldy + c] = acc[r][c];
    }
  }
};

float DotImpl(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void AxpyImpl(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

void AddProductImpl(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += kernels_impl::Opaque(alpha * x[i]);
}

}  // namespace

extern const KernelTable kTable;
const KernelTable kTable{Micro::kPanelsPerItem, &kernels_impl::MatMulItemsAnyType<Micro>, &DotImpl, &AxpyImpl,
                         &AddProductImpl};

}  // namespace moe::portable
