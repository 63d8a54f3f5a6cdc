// The matmul loop nest shared by every SIMD level. Included only by kernels_<level>.cc, each compiled
// with its own instruction-set flags; `Micro` supplies the register tile for that level:
//   static constexpr int kMaxRows, kPanelsPerItem;
//   template <int kRows, int kPanels, typename W>
//   static void Tile(const float* x, int64_t ldx, const W* w, int64_t panel_stride, int64_t k_count,
//                    float* y, int64_t ldy, bool accumulate);
// Tile computes y[r][c] (+)= sum_{k < k_count} x[r*ldx + k] * w[(c/16)*panel_stride + k*16 + c%16]
// for r < kRows, c < 16*kPanels.
#ifndef MOE_KERNELS_KERNELS_IMPL_H_
#define MOE_KERNELS_KERNELS_IMPL_H_

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "kernels/kernels.h"

namespace moe::kernels_impl {

// Returns `v` unchanged, hidden from the optimizer: a product passed through it is rounded on its own
// and never fused with the following add into an FMA. GCC contracts a * b + c in C++ wherever the target
// has FMA, across statements and through the _mm*_mul_ps / _mm*_add_ps intrinsics alike.
template <typename V>
inline V Opaque(V v) {
  asm("" : "+v"(v));
  return v;
}

// K is processed in blocks so one work item's weight block stays in L1/L2 while every row tile uses it.
inline constexpr int64_t kKBlock = 256;

template <class Micro, typename W>
struct TileTable {
  using Fn = void (*)(const float*, int64_t, const W*, int64_t, int64_t, float*, int64_t, bool);
  template <size_t... R, size_t... P>
  static constexpr auto Make(std::index_sequence<R...>, std::index_sequence<P...>) {
    std::array<std::array<Fn, sizeof...(P)>, sizeof...(R)> t{};
    ((Fill<R + 1>(t[R], std::index_sequence<P...>{})), ...);
    return t;
  }
  template <int kRows, size_t... P>
  static constexpr void Fill(std::array<Fn, sizeof...(P)>& row, std::index_sequence<P...>) {
    ((row[P] = &Micro::template Tile<kRows, static_cast<int>(P) + 1, W>), ...);
  }
  static constexpr auto kTable = Make(std::make_index_sequence<Micro::kMaxRows>{},
                                      std::make_index_sequence<Micro::kPanelsPerItem>{});
};

template <class Micro, typename W>
void MatMulItems(const float* x, int64_t rows, int64_t ldx, const PackedMatrix& w, float* y, int64_t ldy,
                 bool accumulate, int64_t item_begin, int64_t item_end) {
  constexpr int64_t kItemCols = kPanelWidth * Micro::kPanelsPerItem;
  const W* weights = static_cast<const W*>(w.data());
  const int64_t k_total = w.in_features();
  const int64_t stride = w.panel_stride();
  alignas(64) float scratch[Micro::kMaxRows * kItemCols];
  for (int64_t item = item_begin; item < item_end; ++item) {
    const int64_t panel0 = item * Micro::kPanelsPerItem;
    const int64_t panels = std::min<int64_t>(Micro::kPanelsPerItem, w.num_panels() - panel0);
    const int64_t col0 = panel0 * kPanelWidth;
    const int64_t cols = std::min(panels * kPanelWidth, w.out_features() - col0);
    const bool partial = cols < panels * kPanelWidth;
    for (int64_t kb = 0; kb < k_total; kb += kKBlock) {
      const int64_t kc = std::min(kKBlock, k_total - kb);
      const bool acc = accumulate || kb > 0;
      for (int64_t r0 = 0; r0 < rows; r0 += Micro::kMaxRows) {
        const int64_t tile_rows = std::min<int64_t>(Micro::kMaxRows, rows - r0);
        float* out = y + r0 * ldy + col0;
        int64_t ld_out = ldy;
        if (partial) {  // the last panel is ragged: compute in scratch, copy the valid columns
          std::memset(scratch, 0, sizeof scratch);
          if (acc) {
            for (int64_t r = 0; r < tile_rows; ++r) std::memcpy(scratch + r * kItemCols, out + r * ldy, cols * sizeof(float));
          }
          out = scratch;
          ld_out = kItemCols;
        }
        TileTable<Micro, W>::kTable[tile_rows - 1][panels - 1](x + r0 * ldx + kb, ldx,
                                                              weights + panel0 * stride + kb * kPanelWidth,
                                                              stride, kc, out, ld_out, acc);
        if (partial) {
          for (int64_t r = 0; r < tile_rows; ++r) {
            std::memcpy(y + (r0 + r) * ldy + col0, scratch + r * kItemCols, cols * sizeof(float));
          }
        }
      }
    }
  }
}

template <class Micro>
void MatMulItemsAnyType(const float* x, int64_t rows, int64_t ldx, const PackedMatrix& w, float* y,
                        int64_t ldy, bool accumulate, int64_t item_begin, int64_t item_end) {
  if (w.storage() == DType::kBF16) {
    MatMulItems<Micro, uint16_t>(x, rows, ldx, w, y, ldy, accumulate, item_begin, item_end);
  } else {
    MatMulItems<Micro, float>(x, rows, ldx, w, y, ldy, accumulate, item_begin, item_end);
  }
}

}  // namespace moe::kernels_impl

#endif  // MOE_KERNELS_KERNELS_IMPL_H_
