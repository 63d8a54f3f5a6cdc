#include "kernels/packed_matrix.h"

#include <cstdlib>
#include <cstring>

namespace moe {

void PackedMatrix::FreeDeleter::operator()(void* p) const { std::free(p); }

PackedMatrix PackedMatrix::Pack(std::span<const MatrixView> sources, DType storage) {
  PackedMatrix m;
  m.storage_ = storage == DType::kBF16 ? DType::kBF16 : DType::kF32;
  m.in_features_ = sources.front().cols;
  for (const MatrixView& s : sources) m.out_features_ += s.rows;
  size_t bytes = m.size_bytes();
  size_t aligned = (bytes + 63) / 64 * 64;
  void* raw = std::aligned_alloc(64, aligned == 0 ? 64 : aligned);
  std::memset(raw, 0, aligned == 0 ? 64 : aligned);
  m.data_ = std::shared_ptr<void>(raw, FreeDeleter{});

  const int64_t k_total = m.in_features_;
  int64_t row = 0;
  for (const MatrixView& s : sources) {
    for (int64_t r = 0; r < s.rows; ++r, ++row) {
      const int64_t panel = row / kPanelWidth;
      const int64_t lane = row % kPanelWidth;
      const size_t base = static_cast<size_t>(panel * m.panel_stride() + lane);
      const size_t src_row = static_cast<size_t>(r * s.cols);
      if (m.storage_ == DType::kBF16 && s.dtype == DType::kBF16) {
        auto* dst = static_cast<uint16_t*>(raw);
        const auto* src = static_cast<const uint16_t*>(s.data) + src_row;
        for (int64_t k = 0; k < k_total; ++k) dst[base + k * kPanelWidth] = src[k];
      } else if (m.storage_ == DType::kBF16) {
        auto* dst = static_cast<uint16_t*>(raw);
        for (int64_t k = 0; k < k_total; ++k) {
          dst[base + k * kPanelWidth] = FloatToBf16(LoadAsFloat(s.data, s.dtype, src_row + k));
        }
      } else {
        auto* dst = static_cast<float*>(raw);
        for (int64_t k = 0; k < k_total; ++k) {
          dst[base + k * kPanelWidth] = LoadAsFloat(s.data, s.dtype, src_row + k);
        }
      }
    }
  }
  return m;
}

float PackedMatrix::At(int64_t row, int64_t col) const {
  const size_t i = static_cast<size_t>((row / kPanelWidth) * panel_stride() + col * kPanelWidth + row % kPanelWidth);
  return LoadAsFloat(data_.get(), storage_, i);
}

}  // namespace moe
