#include "kernels/kernels.h"

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace moe {
namespace {

// Every test runs on every SIMD level this CPU supports.
class KernelsTest : public ::testing::TestWithParam<SimdLevel> {};

std::vector<float> RandomVector(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

TEST_P(KernelsTest, MatMulMatchesNaiveForRaggedShapes) {
  ThreadPool pool(3);
  struct Shape { int64_t rows, out, in; };
  for (Shape s : {Shape{1, 1, 1}, Shape{1, 16, 7}, Shape{3, 33, 64}, Shape{9, 70, 300}, Shape{17, 64, 513},
                  Shape{40, 100, 256}}) {
    for (DType storage : {DType::kF32, DType::kBF16}) {
      std::vector<float> w = RandomVector(s.out * s.in, 1);
      std::vector<uint16_t> w_bf16(w.size());
      for (size_t i = 0; i < w.size(); ++i) w_bf16[i] = FloatToBf16(w[i]);
      MatrixView view = storage == DType::kBF16 ? MatrixView{w_bf16.data(), DType::kBF16, s.out, s.in}
                                                : MatrixView{w.data(), DType::kF32, s.out, s.in};
      PackedMatrix packed = PackedMatrix::Pack(view, storage);
      const int64_t ldx = s.in + 3, ldy = s.out + 5;
      std::vector<float> x = RandomVector(s.rows * ldx, 2);
      std::vector<float> y(s.rows * ldy, 7.0f);
      std::vector<float> bias = RandomVector(s.rows * ldy, 3);
      for (bool accumulate : {false, true}) {
        std::vector<float> out = accumulate ? bias : y;
        MatMul(x.data(), s.rows, ldx, packed, out.data(), ldy, accumulate, &pool, GetParam());
        for (int64_t r = 0; r < s.rows; ++r) {
          for (int64_t o = 0; o < ldy; ++o) {
            const float before = accumulate ? bias[r * ldy + o] : 7.0f;
            if (o >= s.out) {  // columns past out_features are never written
              ASSERT_EQ(out[r * ldy + o], before);
              continue;
            }
            double expect = accumulate ? before : 0.0;
            for (int64_t k = 0; k < s.in; ++k) {
              const float wk = storage == DType::kBF16 ? Bf16ToFloat(w_bf16[o * s.in + k]) : w[o * s.in + k];
              expect += static_cast<double>(x[r * ldx + k]) * wk;
            }
            ASSERT_NEAR(out[r * ldy + o], expect, 1e-4 * (1 + std::sqrt(s.in)))
                << "rows=" << s.rows << " out=" << s.out << " in=" << s.in << " r=" << r << " o=" << o
                << " bf16=" << (storage == DType::kBF16) << " acc=" << accumulate;
          }
        }
      }
    }
  }
}

TEST_P(KernelsTest, PackStacksSourcesAndWidensF16) {
  std::vector<float> a = RandomVector(3 * 5, 4);
  std::vector<uint16_t> b(2 * 5);
  for (size_t i = 0; i < b.size(); ++i) b[i] = FloatToF16(static_cast<float>(i) * 0.25f);
  MatrixView views[] = {{a.data(), DType::kF32, 3, 5}, {b.data(), DType::kF16, 2, 5}};
  PackedMatrix p = PackedMatrix::Pack(views, DType::kF32);
  ASSERT_EQ(p.out_features(), 5);
  EXPECT_EQ(p.At(1, 2), a[1 * 5 + 2]);
  EXPECT_EQ(p.At(4, 3), 2.0f);  // row 1 of b, element 3: index 8 * 0.25
}

TEST_P(KernelsTest, DotAndAxpyMatchNaive) {
  for (int64_t n : {0, 1, 15, 16, 17, 64, 100, 129}) {
    std::vector<float> a = RandomVector(n, 5), b = RandomVector(n, 6);
    double expect = 0;
    for (int64_t i = 0; i < n; ++i) expect += static_cast<double>(a[i]) * b[i];
    EXPECT_NEAR(Dot(a.data(), b.data(), n, GetParam()), expect, 1e-5 * (n + 1)) << n;
    std::vector<float> y = b;
    Axpy(0.5f, a.data(), y.data(), n, GetParam());
    for (int64_t i = 0; i < n; ++i) ASSERT_FLOAT_EQ(y[i], b[i] + 0.5f * a[i]);
  }
}

TEST_P(KernelsTest, AddProductRoundsTheProductFirstAndMatchesThePortableBitsExactly) {
  for (int64_t n : {0, 1, 7, 8, 15, 16, 17, 100, 129}) {
    const std::vector<float> x = RandomVector(n, 7), start = RandomVector(n, 8);
    std::vector<float> y = start, portable = start;
    AddProduct(0.37f, x.data(), y.data(), n, GetParam());
    AddProduct(0.37f, x.data(), portable.data(), n, SimdLevel::kPortable);
    for (int64_t i = 0; i < n; ++i) {
      const float product = 0.37f * x[i];
      ASSERT_EQ(y[i], start[i] + product) << n << " " << i;
      ASSERT_EQ(y[i], portable[i]) << n << " " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllSupportedLevels, KernelsTest, ::testing::ValuesIn(SupportedSimdLevels()),
                         [](const auto& info) { return std::string(SimdLevelName(info.param)); });

}  // namespace
}  // namespace moe
