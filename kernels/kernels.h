// CPU math kernels with F32 accumulation, dispatched at run time by SIMD level.
#ifndef MOE_KERNELS_KERNELS_H_
#define MOE_KERNELS_KERNELS_H_

#include <cstdint>

#include "common/cpu_features.h"
#include "common/thread_pool.h"
#include "kernels/packed_matrix.h"

namespace moe {

// y[m, n] (=|+=) sum_k x[m, k] * W[n, k] for m < rows, n < w.out_features(). x has row stride ldx
// (>= in_features), y has row stride ldy (>= out_features). When `accumulate` is false y's previous
// contents are ignored. Uses `pool` (may be null: single thread) and the kernels of `level`.
// REQUIRES: CpuSupports(level); x and y do not overlap.
void MatMul(const float* x, int64_t rows, int64_t ldx, const PackedMatrix& w, float* y, int64_t ldy,
            bool accumulate, ThreadPool* pool, SimdLevel level = BestSimdLevel());

// Dense-contiguous convenience form: ldx = in_features, ldy = out_features, no accumulation.
inline void MatMul(const float* x, int64_t rows, const PackedMatrix& w, float* y, ThreadPool* pool,
                   SimdLevel level = BestSimdLevel()) {
  MatMul(x, rows, w.in_features(), w, y, w.out_features(), false, pool, level);
}

// sum_i a[i] * b[i]
float Dot(const float* a, const float* b, int64_t n, SimdLevel level = BestSimdLevel());
// y[i] += alpha * x[i]
void Axpy(float alpha, const float* x, float* y, int64_t n, SimdLevel level = BestSimdLevel());
// y[i] += alpha * x[i] with the product rounded to float before the sum (never a fused multiply-add).
// The MoE combine uses it: with every weighted expert output rounded on its own, adding two of them
// is commutative, so a top-2 token's output is bit-identical wherever its experts run (one worker
// or two, any shard map, the single-process engine); a resumed request then continues exactly.
// Every SIMD level gives the same bits (a rounded product, then a rounded sum, lane by lane).
void AddProduct(float alpha, const float* x, float* y, int64_t n, SimdLevel level = BestSimdLevel());

// The per-level entry points behind the functions above (one definition per kernels_<level>.cc).
struct KernelTable {
  int64_t panels_per_item;  // panels one matmul work item covers
  // Computes work items [item_begin, item_end) of a matmul (see MatMul for the other arguments).
  void (*matmul_items)(const float* x, int64_t rows, int64_t ldx, const PackedMatrix& w, float* y,
                       int64_t ldy, bool accumulate, int64_t item_begin, int64_t item_end);
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float alpha, const float* x, float* y, int64_t n);
  void (*add_product)(float alpha, const float* x, float* y, int64_t n);
};
const KernelTable& KernelsFor(SimdLevel level);

}  // namespace moe

#endif  // MOE_KERNELS_KERNELS_H_
