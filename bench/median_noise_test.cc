#include "bench/median_noise.h"

#include <algorithm>

#include "gtest/gtest.h"

namespace moe::bench {
namespace {

// One figure, one run a start.
LiveSeries OneFigure(int group, std::vector<double> by_start) {
  LiveSeries s{group, {}};
  for (double v : by_start) s.by_start.push_back({{v}});
  return s;
}

TEST(MedianNoiseTest, RunsThatAgreeHaveNoNoise) {
  LiveSeries s{0, {{{5, 7}, {5, 7}}, {{5, 7}}, {{5, 7}, {5, 7}, {5, 7}}}};
  const std::optional<MedianNoise> noise = BootstrapMedianNoise({s}, 200, 1);
  ASSERT_TRUE(noise.has_value());
  EXPECT_EQ(noise->figures, 2u);
  EXPECT_EQ(noise->median_miss, 0);
  EXPECT_EQ(noise->worst_miss_p90, 0);
}

// Two starts at 2 and 4: the median (Quantile's: the value at rank floor(n / 2)) is 4; a draw of
// both starts keeps it, a draw of the first start twice moves it to 2 (a miss of 50%), one draw in four.
TEST(MedianNoiseTest, TwoStartsMissAsOftenAsTheDrawsPickTheOtherOneTwice) {
  const std::optional<MedianNoise> noise = BootstrapMedianNoise({OneFigure(0, {2, 4})}, 4000, 7);
  ASSERT_TRUE(noise.has_value());
  const double moved = std::count(noise->worst_by_draw.begin(), noise->worst_by_draw.end(), 0.5);
  EXPECT_NEAR(moved / 4000, 0.25, 0.03);
  EXPECT_EQ(noise->worst_miss, 0);
  EXPECT_EQ(noise->worst_miss_p90, 0.5);
}

// Setups of one group are resampled on the same starts: two setups that move together miss together.
// In different groups they are drawn apart, and a draw's worst is more often a miss.
TEST(MedianNoiseTest, SetupsOfOneGroupShareTheirDraws) {
  const auto moved = [](const MedianNoise& n) {
    return std::count_if(n.worst_by_draw.begin(), n.worst_by_draw.end(), [](double w) { return w > 0; });
  };
  const std::optional<MedianNoise> together = BootstrapMedianNoise({OneFigure(0, {2, 4}), OneFigure(0, {2, 4})}, 4000, 7);
  const std::optional<MedianNoise> apart = BootstrapMedianNoise({OneFigure(0, {2, 4}), OneFigure(1, {2, 4})}, 4000, 7);
  ASSERT_TRUE(together.has_value() && apart.has_value());
  EXPECT_NEAR(static_cast<double>(moved(*together)) / 4000, 0.25, 0.03);
  EXPECT_NEAR(static_cast<double>(moved(*apart)) / 4000, 1 - 0.75 * 0.75, 0.03);
}

TEST(MedianNoiseTest, IsRelativeAndRepeatable) {
  const std::optional<MedianNoise> a = BootstrapMedianNoise({OneFigure(0, {3, 4, 6, 5})}, 500, 3);
  const std::optional<MedianNoise> b = BootstrapMedianNoise({OneFigure(0, {30, 40, 60, 50})}, 500, 3);
  ASSERT_TRUE(a.has_value() && b.has_value());
  EXPECT_GT(a->worst_miss_p90, 0);
  EXPECT_EQ(a->worst_by_draw.size(), 500u);
  for (size_t i = 0; i < a->worst_by_draw.size(); ++i) EXPECT_NEAR(a->worst_by_draw[i], b->worst_by_draw[i], 1e-12);
}

TEST(MedianNoiseTest, NeedsTwoStartsAndAgreeingShapes) {
  EXPECT_FALSE(BootstrapMedianNoise({OneFigure(0, {2})}, 100, 1).has_value());
  EXPECT_FALSE(BootstrapMedianNoise({}, 100, 1).has_value());
  EXPECT_FALSE(BootstrapMedianNoise({OneFigure(0, {2, 3})}, 0, 1).has_value());
  EXPECT_FALSE(BootstrapMedianNoise({OneFigure(0, {2, 3}), OneFigure(0, {2, 3, 4})}, 100, 1).has_value());  // one group, two start counts
  LiveSeries ragged{0, {{{1, 2}}, {{1}}}};
  EXPECT_FALSE(BootstrapMedianNoise({ragged}, 100, 1).has_value());
  LiveSeries empty_start{0, {{{1}}, {}}};
  EXPECT_FALSE(BootstrapMedianNoise({empty_start}, 100, 1).has_value());
}

}  // namespace
}  // namespace moe::bench
