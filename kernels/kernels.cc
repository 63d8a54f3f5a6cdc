#include "kernels/kernels.h"

namespace moe {

namespace portable { extern const KernelTable kTable; }
namespace avx2 { extern const KernelTable kTable; }
namespace avx512 { extern const KernelTable kTable; }

const KernelTable& KernelsFor(SimdLevel level) {
  switch (level) {
    case SimdLevel::kAvx512: return avx512::kTable;
    case SimdLevel::kAvx2: return avx2::kTable;
    case SimdLevel::kPortable: break;
  }
  return portable::kTable;
}

void MatMul(const float* x, int64_t rows, int64_t ldx, const PackedMatrix& w, float* y, int64_t ldy,
            bool accumulate, ThreadPool* pool, SimdLevel level) {
  if (rows <= 0 || w.empty()) return;
  const KernelTable& k = KernelsFor(level);
  const int64_t items = (w.num_panels() + k.panels_per_item - 1) / k.panels_per_item;
  auto run = [&](int64_t begin, int64_t end) {
    k.matmul_items(x, rows, ldx, w, y, ldy, accumulate, begin, end);
  };
  // Tiny products are not worth waking the pool for.
  const int64_t work = rows * w.in_features() * w.out_features();
  if (pool == nullptr || work < (1 << 15)) {
    run(0, items);
  } else {
    pool->ParallelFor(items, run);
  }
}

float Dot(const float* a, const float* b, int64_t n, SimdLevel level) { return KernelsFor(level).dot(a, b, n); }

void Axpy(float alpha, const float* x, float* y, int64_t n, SimdLevel level) {
  KernelsFor(level).axpy(alpha, x, y, n);
}

void AddProduct(float alpha, const float* x, float* y, int64_t n, SimdLevel level) {
  KernelsFor(level).add_product(alpha, x, y, n);
}

}  // namespace moe
