#include "common/numeric.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace moe {
namespace {

TEST(NumericTest, Bf16RoundTripIsExactForRepresentableValues) {
  for (float v : {0.0f, 1.0f, -2.5f, 0.015625f, 1.5f * 1099511627776.0f}) {
    EXPECT_EQ(Bf16ToFloat(FloatToBf16(v)), v);
  }
}

TEST(NumericTest, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to the even one (1).
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(NumericTest, F16RoundTripCoversNormalsSubnormalsAndInfinity) {
  for (float v : {0.0f, 1.0f, -0.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f, -1.0e-6f}) {
    float back = F16ToFloat(FloatToF16(v));
    EXPECT_NEAR(back, v, std::fabs(v) * 1e-3 + 6e-8) << v;
  }
  EXPECT_TRUE(std::isinf(F16ToFloat(FloatToF16(1e6f))));
  EXPECT_EQ(F16ToFloat(0x3C00), 1.0f);
  EXPECT_EQ(F16ToFloat(0xC000), -2.0f);
  EXPECT_EQ(F16ToFloat(0x0001), 5.960464477539063e-08f);
}

}  // namespace
}  // namespace moe
