#include <cmath>
#include <filesystem>
#include <fstream>

#include "checkpoint/random_checkpoint.h"
#include "common/status.h"
#include "common/status_matchers.h"
#include "common/test_dir.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "router/expert_map.h"
#include "router/pruning.h"
#include "router/router_stats.h"

namespace moe {
namespace {

using ::moe::testing::IsOk;
using ::moe::testing::StatusIs;
using ::testing::ElementsAre;

TEST(RouterAffinityTest, HandComputedCosines) {
  // Columns: e0 = (1, 0, 1), e1 = (2, 0, 2) (same direction), e2 = (-1, 0, -1) (opposite), e3 = (0, 1, 0).
  LayerRouterStats s{4, {1, 2, -1, 0, 0, 0, 0, 1, 1, 2, -1, 0}, {0, 0, 0, 0}};
  const std::vector<double> a = RouterAffinity(s);
  EXPECT_DOUBLE_EQ(a[0 * 4 + 0], 1.0);
  EXPECT_NEAR(a[0 * 4 + 1], 1.0, 1e-12);
  EXPECT_NEAR(a[0 * 4 + 2], 0.0, 1e-12);
  EXPECT_NEAR(a[0 * 4 + 3], 0.5, 1e-12);
  EXPECT_NEAR(a[3 * 4 + 1], 0.5, 1e-12);
}

TEST(SymmetricEigenTest, TwoByTwo) {
  std::vector<double> values, vectors;
  SymmetricEigen({2, 1, 1, 2}, 2, &values, &vectors);
  EXPECT_NEAR(values[0], 3.0, 1e-12);
  EXPECT_NEAR(values[1], 1.0, 1e-12);
  EXPECT_NEAR(std::abs(vectors[0 * 2 + 0]), std::sqrt(0.5), 1e-12);  // (1, 1) / sqrt 2
  EXPECT_NEAR(vectors[0 * 2 + 0], vectors[1 * 2 + 0], 1e-12);
}

TEST(SpectralClustersTest, SeparatesTwoBlocks) {
  // Experts {0, 2, 4} agree with each other, {1, 3, 5} too; across the blocks they barely agree.
  const int n = 6;
  std::vector<double> a(n * n);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) a[i * n + j] = i == j ? 1.0 : (i % 2 == j % 2 ? 0.9 : 0.05);
  }
  EXPECT_THAT(SpectralClusters(a, n, 2), ElementsAre(0, 1, 0, 1, 0, 1));
  EXPECT_THAT(SpectralClusters(a, n, 6), ElementsAre(0, 1, 2, 3, 4, 5));
  EXPECT_THAT(SpectralClusters(a, n, 1), ElementsAre(0, 0, 0, 0, 0, 0));
}

TEST(MinCostAssignmentTest, HandExample) {
  // Optimum: row 0 -> col 1 (1), row 1 -> col 0 (2), row 2 -> col 2 (2): total 5.
  EXPECT_THAT(MinCostAssignment({4, 1, 3, 2, 0, 5, 3, 2, 2}, 3), ElementsAre(1, 0, 2));
}

ExpertFfn SmallExpert(int ffn, int hidden, float seed) {
  ExpertFfn e{ffn, hidden, {}, {}, {}};
  for (int i = 0; i < ffn * hidden; ++i) {
    e.gate.push_back(std::sin(seed + 1.3f * i));
    e.up.push_back(std::cos(seed + 0.7f * i));
    e.down.push_back(std::sin(seed * 2 + 0.9f * i));
  }
  return e;
}

TEST(MatchNeuronsTest, RecoversAPermutedCopy) {
  const ExpertFfn reference = SmallExpert(5, 3, 0.4f);
  const std::vector<int32_t> shuffle = {3, 0, 4, 1, 2};  // neuron j of `member` is neuron shuffle[j] of reference
  std::vector<int32_t> inverse(5);
  for (int j = 0; j < 5; ++j) inverse[shuffle[j]] = j;
  const ExpertFfn member = PermuteNeurons(reference, shuffle);
  const std::vector<int32_t> perm = MatchNeurons(reference, member);
  EXPECT_EQ(perm, inverse);
  const ExpertFfn aligned = PermuteNeurons(member, perm);
  EXPECT_EQ(aligned.gate, reference.gate);
  EXPECT_EQ(aligned.up, reference.up);
  EXPECT_EQ(aligned.down, reference.down);
}

TEST(WeightedAverageTest, UsageWeights) {
  ExpertFfn a{1, 1, {1}, {2}, {4}}, b{1, 1, {3}, {6}, {0}};
  ExpertFfn m = WeightedAverage({a, b}, {1, 3});
  EXPECT_FLOAT_EQ(m.gate[0], 2.5f);  // (1 * 1 + 3 * 3) / 4
  EXPECT_FLOAT_EQ(m.up[0], 5.0f);    // (2 + 18) / 4
  EXPECT_FLOAT_EQ(m.down[0], 1.0f);  // (4 + 0) / 4
  m = WeightedAverage({a, b}, {0, 0});
  EXPECT_FLOAT_EQ(m.gate[0], 2.0f);  // unused experts: plain mean
}

TEST(BuildLayerTest, UncurlMergesCorrelatedExpertsAndFrequencyKeepsTheMostUsed) {
  // Router logits over 4 tokens: experts 0 and 1 rise and fall together, so do 2 and 3.
  LayerRouterStats s{4, {}, {3, 1, 2, 6}};
  const float rows[4][4] = {{3, 2.9f, -1, -1.2f}, {-2, -2.1f, 1, 1.1f}, {1, 1.2f, -3, -2.8f}, {-1, -0.9f, 2, 2.2f}};
  for (const auto& r : rows) s.logits.insert(s.logits.end(), r, r + 4);
  std::vector<ExpertFfn> experts;
  for (int e = 0; e < 4; ++e) experts.push_back(SmallExpert(4, 2, 0.3f * e));
  // Expert 1 is expert 0 with its neurons shuffled: alignment must undo that before averaging.
  experts[1] = PermuteNeurons(experts[0], {2, 3, 0, 1});
  auto layer = BuildUncurlLayer(5, s, 2, [&](int32_t e) -> absl::StatusOr<ExpertFfn> { return experts[e]; });
  ASSERT_THAT(layer, IsOk());
  EXPECT_EQ(layer->layer, 5);
  EXPECT_THAT(layer->slot_to_expert, ElementsAre(4, 4, 5, 5));
  ASSERT_EQ(layer->merged.size(), 2u);
  EXPECT_THAT(layer->merged[0].members, ElementsAre(0, 1));  // most used first
  EXPECT_THAT(layer->merged[1].members, ElementsAre(3, 2));
  EXPECT_THAT(layer->merged[1].usage, ElementsAre(6, 2));
  for (size_t i = 0; i < experts[0].gate.size(); ++i) EXPECT_FLOAT_EQ(layer->merged[0].weights.gate[i], experts[0].gate[i]);
  const ExpertFfn aligned2 = PermuteNeurons(experts[2], MatchNeurons(experts[3], experts[2]));
  for (size_t i = 0; i < experts[3].up.size(); ++i) {
    EXPECT_NEAR(layer->merged[1].weights.up[i], (6 * experts[3].up[i] + 2 * aligned2.up[i]) / 8, 1e-6);
  }
  const LayerExpertMap freq = BuildFrequencyLayer(5, s, 2);
  EXPECT_THAT(freq.slot_to_expert, ElementsAre(0, kNoExpert, kNoExpert, 3));
  EXPECT_TRUE(freq.merged.empty());
}

TEST(ComputeRoutingTest, TaskMapMergesAndDropsSlots) {
  ModelConfig c;
  c.num_experts = 4;
  c.top_k = 2;
  c.norm_topk_prob = true;
  const float logits[4] = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};  // probabilities 1:2:3:4
  const int32_t merge[4] = {4, 4, 5, 5};
  const int32_t* rows[1] = {merge};
  RoutingDecision r = ComputeRouting(logits, 1, c, rows);
  EXPECT_THAT(r.experts, ElementsAre(5, kNoExpert));  // slots 3 and 2 both go to merged expert 5
  EXPECT_NEAR(r.weights[0], 1.0f, 1e-6);
  EXPECT_EQ(r.weights[1], 0.0f);
  const int32_t drop[4] = {kNoExpert, 1, 2, kNoExpert};
  rows[0] = drop;
  r = ComputeRouting(logits, 1, c, rows);
  EXPECT_THAT(r.experts, ElementsAre(2, 1));  // softmax over slots 1, 2 only: 3/5 and 2/5
  EXPECT_NEAR(r.weights[0], 0.6f, 1e-6);
  EXPECT_NEAR(r.weights[1], 0.4f, 1e-6);
  r = ComputeRouting(logits, 1, c);
  EXPECT_THAT(r.experts, ElementsAre(3, 2));
}

// Two tokens, 4 experts top-2, slots 2 and 3 merged into expert 4: the first token's top slots (3, 2)
// become one expert call, the second's (1, 0) stay two; 1.5 experts a token.
TEST(MeanExpertsPerTokenTest, CountsTheCallsLeftAfterMergedSlotsCombine) {
  ModelConfig c;
  c.num_experts = 4;
  c.top_k = 2;
  LayerRouterStats stats;
  stats.num_experts = 4;
  stats.logits = {0.0f, 1.0f, 2.0f, 3.0f,   // top: slots 3, 2
                  3.0f, 2.0f, 0.0f, 1.0f};  // top: slots 0, 1
  LayerExpertMap layer;
  layer.slot_to_expert = {0, 1, 4, 4};
  EXPECT_DOUBLE_EQ(MeanExpertsPerToken(stats, layer, c), 1.5);
  layer.slot_to_expert = {0, 1, 2, 3};
  EXPECT_DOUBLE_EQ(MeanExpertsPerToken(stats, layer, c), 2.0);
  EXPECT_DOUBLE_EQ(MeanExpertsPerToken(LayerRouterStats{4, {}, {}}, layer, c), 0.0);
}

class ExpertMapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::moe::testing::ScratchDir("router_test");
    std::filesystem::remove_all(dir_);
    RandomCheckpointOptions o;
    o.tokenizer = false;
    ASSERT_THAT(WriteRandomCheckpoint((dir_ / "model").string(), o), IsOk());
    auto source = ModelSource::Open((dir_ / "model").string());
    ASSERT_THAT(source, IsOk());
    source_ = std::move(*source);
    auto id = IdentifyModel(*source_);
    ASSERT_THAT(id, IsOk());
    identity_ = *id;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Layer 1: slot 0 goes to a merged expert that is an exact copy of expert 0; slot 5 is dropped.
  ExpertMap CopyMap() {
    ExpertMap map;
    map.name = "copy";
    map.task = "t";
    map.method = "uncurl";
    map.experts_kept = 8;
    map.model = identity_;
    LayerExpertMap lm;
    lm.layer = 1;
    lm.slot_to_expert = {8, 1, 2, 3, 4, kNoExpert, 6, 7};
    auto w = ReadExpertFfn(*source_, 1, 0);
    EXPECT_THAT(w, IsOk());
    lm.merged.push_back({{0}, {10}, *w});
    map.layers.push_back(lm);
    return map;
  }

  std::filesystem::path dir_;
  std::shared_ptr<const ModelSource> source_;
  ModelIdentity identity_;
  ThreadPool pool_{1};
};

TEST_F(ExpertMapTest, RoundTripsAndRefusesBadMaps) {
  const ExpertMap map = CopyMap();
  ASSERT_THAT(ValidateExpertMap(map, identity_, 2), IsOk());
  ASSERT_THAT(WriteExpertMap(map, (dir_ / "copy").string(), DType::kF32), IsOk());
  auto back = ReadExpertMap((dir_ / "copy").string(), true);
  ASSERT_THAT(back, IsOk());
  EXPECT_THAT(ValidateExpertMap(*back, identity_, 2), IsOk());
  EXPECT_EQ(back->layers[0].slot_to_expert, map.layers[0].slot_to_expert);
  EXPECT_EQ(back->layers[0].merged[0].weights.down, map.layers[0].merged[0].weights.down);
  EXPECT_EQ(back->ReachableExperts(1), 7);
  EXPECT_EQ(back->ReachableExperts(0), 8);
  EXPECT_EQ(back->MeanExpertsPerToken(), 0);  // not measured
  ExpertMap measured = map;
  measured.layers[0].experts_per_token = 1.75;
  ASSERT_THAT(WriteExpertMap(measured, (dir_ / "measured").string(), DType::kF32), IsOk());
  auto measured_back = ReadExpertMap((dir_ / "measured").string(), false);
  ASSERT_THAT(measured_back, IsOk());
  EXPECT_EQ(measured_back->MeanExpertsPerToken(), 1.75);

  ExpertMap other = map;
  other.model.router_fingerprint = "0000000000000000";
  EXPECT_THAT(ValidateExpertMap(other, identity_, 2), StatusIs(absl::StatusCode::kFailedPrecondition, "another model"));
  ExpertMap bad = map;
  bad.layers[0].slot_to_expert[3] = 9;
  EXPECT_THAT(ValidateExpertMap(bad, identity_, 2), StatusIs(absl::StatusCode::kInvalidArgument, "slot 3 targets expert 9"));
  bad = map;
  bad.layers[0].slot_to_expert.pop_back();
  EXPECT_THAT(ValidateExpertMap(bad, identity_, 2), StatusIs(absl::StatusCode::kInvalidArgument, "slot_to_expert has 7"));
  bad = map;
  bad.layers[0].merged[0].weights.gate.pop_back();
  EXPECT_THAT(ValidateExpertMap(bad, identity_, 2), StatusIs(absl::StatusCode::kInvalidArgument, "shape"));
  bad = map;
  bad.layers[0].slot_to_expert = {8, kNoExpert, kNoExpert, kNoExpert, kNoExpert, kNoExpert, kNoExpert, kNoExpert};
  EXPECT_THAT(ValidateExpertMap(bad, identity_, 2), StatusIs(absl::StatusCode::kInvalidArgument, "fewer than top-k"));
  bad = map;
  bad.layers[0].experts_per_token = 2.5;
  EXPECT_THAT(ValidateExpertMap(bad, identity_, 2), StatusIs(absl::StatusCode::kInvalidArgument, "experts_per_token 2.5"));
  bad = map;
  bad.layers[0].layer = 7;
  EXPECT_THAT(ValidateExpertMap(bad, identity_, 2), StatusIs(absl::StatusCode::kInvalidArgument, "range"));

  std::ofstream((dir_ / "copy" / "manifest.json").string()) << "{\"format\": \"moe-expert-map/1\", \"name\": 3}";
  EXPECT_THAT(ReadExpertMap((dir_ / "copy").string(), false), StatusIs(absl::StatusCode::kInvalidArgument, "manifest.json"));
  EXPECT_THAT(ReadExpertMap((dir_ / "absent").string(), false), StatusIs(absl::StatusCode::kNotFound, ""));
}

TEST_F(ExpertMapTest, ServingThroughAMapRoutesToTheMergedExpertsAndNeverToDroppedOnes) {
  auto weights = LoadModelWeights(source_, LoadOptions{}, &pool_);
  ASSERT_THAT(weights, IsOk());
  Model model(std::move(*weights), &pool_);
  const ModelConfig& c = model.config();
  const ExpertMap copy = CopyMap();
  const auto base = MergedExpertBaseIds({&copy, 1}, c);
  EXPECT_THAT(base[0], ElementsAre(8, 8));
  InstallMergedExperts(copy, base[0], model.mutable_weights(), nullptr);
  const SlotRouting routing = ResolveSlotRouting(copy, base[0], c);

  std::vector<int32_t> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back((i * 37 + 11) % static_cast<int32_t>(c.vocab_size));
  auto run = [&](const SlotRouting* r) {
    auto cache = model.NewCache();
    ForwardInput in{cache.get(), prompt, true, r};
    model.ResetExpertUsage();
    auto logits = model.Forward(std::span<const ForwardInput>(&in, 1));
    EXPECT_THAT(logits, IsOk());
    return *logits;
  };
  const std::vector<float> full = run(nullptr);
  const std::vector<float> mapped = run(&routing);
  const auto usage = model.expert_usage();
  EXPECT_EQ(usage[1][0], 0);  // slot 0 now goes to table id 8, a copy of expert 0
  EXPECT_GT(usage[1][8], 0);
  EXPECT_EQ(usage[1][5], 0);  // dropped
  EXPECT_GT(usage[0][5] + usage[0][0], 0);  // layer 0 is not mapped
  // Whether the dropped slot mattered or not, the copy alone must not change anything: compare with a
  // map that only drops slot 5.
  ExpertMap drop_only = copy;
  drop_only.layers[0].slot_to_expert[0] = 0;
  drop_only.layers[0].merged.clear();
  const SlotRouting drop_routing = ResolveSlotRouting(drop_only, base[0], c);
  EXPECT_EQ(run(&drop_routing), mapped);
  EXPECT_NE(full, mapped);
}

TEST_F(ExpertMapTest, CollectedStatsCountEveryTokenTopK) {
  auto weights = LoadModelWeights(source_, LoadOptions{}, &pool_);
  ASSERT_THAT(weights, IsOk());
  Model model(std::move(*weights), &pool_);
  auto stats = CollectRouterStats(model, {{1, 2, 3}, {4, 5}, {6}}, 2);
  ASSERT_THAT(stats, IsOk());
  ASSERT_EQ(stats->size(), 2u);
  for (const LayerRouterStats& s : *stats) {
    EXPECT_EQ(s.num_tokens(), 6);
    int64_t total = 0;
    for (int64_t u : s.usage) total += u;
    EXPECT_EQ(total, 6 * 2);
  }
  EXPECT_THAT(CollectRouterStats(model, {{}}, 2), StatusIs(absl::StatusCode::kInvalidArgument, ""));
}

}  // namespace
}  // namespace moe
