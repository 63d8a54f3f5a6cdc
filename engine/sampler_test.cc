#include "engine/sampler.h"

#include <cmath>
#include <vector>

#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::moe::testing::StatusIs;

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f};

TEST(SamplerTest, GreedyPicksTheFirstMaximum) {
  Sampler s(SamplingParams{});
  EXPECT_EQ(s.Sample(kLogits), 1);
}

TEST(SamplerTest, SameSeedSameTokensOtherSeedOtherTokens) {
  SamplingParams p{.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 42};
  Sampler a(p), b(p);
  p.seed = 43;
  Sampler c(p);
  int differ = 0;
  for (int i = 0; i < 200; ++i) {
    const int32_t ta = a.Sample(kLogits);
    ASSERT_EQ(ta, b.Sample(kLogits));
    differ += ta != c.Sample(kLogits);
  }
  EXPECT_GT(differ, 20);
}

TEST(SamplerTest, SkipSamplesContinuesTheStreamWhereAResumedSequenceLeftOff) {
  SamplingParams p{.temperature = 0.8f, .top_k = 0, .top_p = 0.9f, .seed = 7};
  Sampler whole(p);
  std::vector<int32_t> expected;
  for (int i = 0; i < 100; ++i) expected.push_back(whole.Sample(kLogits));
  Sampler resumed(p);
  resumed.SkipSamples(60);
  for (int i = 60; i < 100; ++i) ASSERT_EQ(resumed.Sample(kLogits), expected[i]) << "sample " << i;
  Sampler not_skipped(p);
  int differ = 0;
  for (int i = 60; i < 100; ++i) differ += not_skipped.Sample(kLogits) != expected[i];
  EXPECT_GT(differ, 5);
}

TEST(SamplerTest, FrequenciesFollowTheSoftmax) {
  Sampler s(SamplingParams{.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 7});
  std::vector<int> counts(kLogits.size());
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++counts[s.Sample(kLogits)];
  double z = 0;
  for (float l : kLogits) z += std::exp(l);
  for (size_t i = 0; i < kLogits.size(); ++i) {
    EXPECT_NEAR(counts[i] / static_cast<double>(n), std::exp(kLogits[i]) / z, 0.015) << i;
  }
}

TEST(SamplerTest, TopKAndTopPRestrictTheCandidates) {
  Sampler top_k(SamplingParams{.temperature = 5.0f, .top_k = 2, .top_p = 1.0f, .seed = 1});
  Sampler top_p(SamplingParams{.temperature = 1.0f, .top_k = 0, .top_p = 0.5f, .seed = 1});
  for (int i = 0; i < 500; ++i) {
    const int32_t k = top_k.Sample(kLogits);
    EXPECT_TRUE(k == 1 || k == 3) << k;
    // The two logits of 3.0 hold ~0.62 of the mass together, the first alone ~0.31 < 0.5: both are kept.
    const int32_t p = top_p.Sample(kLogits);
    EXPECT_TRUE(p == 1 || p == 3) << p;
  }
}

TEST(SamplerTest, RejectsBadParameters) {
  EXPECT_THAT(SamplingParams{.temperature = -1.0f}.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "temperature"));
  EXPECT_THAT(SamplingParams{.temperature = NAN}.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "temperature"));
  EXPECT_THAT(SamplingParams{.top_k = -2}.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "top_k"));
  EXPECT_THAT(SamplingParams{.top_p = 0.0f}.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "top_p"));
  EXPECT_THAT(SamplingParams{.top_p = 1.5f}.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "top_p"));
}

}  // namespace
}  // namespace moe
