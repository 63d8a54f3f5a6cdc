// Weight matrices repacked once, at load time, into the layout the matmul kernels stream.
#ifndef MOE_KERNELS_PACKED_MATRIX_H_
#define MOE_KERNELS_PACKED_MATRIX_H_

#include <cstdint>
#include <memory>
#include <span>

#include "common/dtype.h"

namespace moe {

// Output rows per panel; every SIMD level uses the same layout.
inline constexpr int64_t kPanelWidth = 16;

// A row-major source matrix [rows, cols] in checkpoint layout (a Hugging Face Linear weight is
// [out_features, in_features]). Not owned.
struct MatrixView {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
};

// W [out_features, in_features] stored as panels of kPanelWidth output rows: panel p holds, for each
// k in [0, in_features), the 16 weights W[16p .. 16p+15][k] contiguously. Rows past out_features are
// zero. Elements are F32 or BF16 (F16 sources are widened to F32). Immutable after packing.
class PackedMatrix {
 public:
  PackedMatrix() = default;

  // Stacks the sources' rows (all with the same cols) into one matrix of type `storage`
  // (kF32 or kBF16). REQUIRES: sources non-empty, equal cols, storage != kF16.
  static PackedMatrix Pack(std::span<const MatrixView> sources, DType storage);
  static PackedMatrix Pack(const MatrixView& source, DType storage) {
    return Pack(std::span<const MatrixView>(&source, 1), storage);
  }

  int64_t out_features() const { return out_features_; }
  int64_t in_features() const { return in_features_; }
  int64_t num_panels() const { return (out_features_ + kPanelWidth - 1) / kPanelWidth; }
  DType storage() const { return storage_; }
  // Elements between the starts of two consecutive panels.
  int64_t panel_stride() const { return in_features_ * kPanelWidth; }
  const void* data() const { return data_.get(); }
  size_t size_bytes() const { return static_cast<size_t>(num_panels() * panel_stride()) * DTypeSize(storage_); }
  bool empty() const { return out_features_ == 0; }

  // W[row][col] as float (tests and slow paths).
  float At(int64_t row, int64_t col) const;

 private:
  struct FreeDeleter {
    void operator()(void* p) const;
  };
  int64_t out_features_ = 0;
  int64_t in_features_ = 0;
  DType storage_ = DType::kF32;
  std::shared_ptr<void> data_;
};

}  // namespace moe

#endif  // MOE_KERNELS_PACKED_MATRIX_H_
