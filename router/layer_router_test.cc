#include "router/layer_router.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include "checkpoint/random_checkpoint.h"
#include "common/splitmix.h"
#include "common/status.h"
#include "common/status_matchers.h"
#include "common/test_dir.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "router/layer_search.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using ::moe::testing::IsOk;
using ::moe::testing::StatusIs;

fs::path TestDir(const std::string& name) {
  return ::moe::testing::ScratchDir("layer_router_test", name);
}

ModelIdentity SmallModel(int64_t hidden = 8, int64_t layers = 3) {
  return {"mixtral", layers, 4, hidden, 16, "00000000deadbeef"};
}

TEST(FocalLossTest, GradientMatchesFiniteDifferencesAndGammaZeroIsWeightedCrossEntropy) {
  const ClassScores logits = {0.3f, -1.2f, 0.8f};
  for (int label = 0; label < 3; ++label) {
    ClassScores grad;
    FocalLoss(logits, label, 1.7f, 2.0f, &grad);
    for (int c = 0; c < 3; ++c) {
      ClassScores up = logits, down = logits;
      up[c] += 1e-3f;
      down[c] -= 1e-3f;
      const float numeric = (FocalLoss(up, label, 1.7f, 2.0f, nullptr) - FocalLoss(down, label, 1.7f, 2.0f, nullptr)) / 2e-3f;
      EXPECT_NEAR(grad[c], numeric, 2e-3) << "label " << label << " logit " << c;
    }
    const ClassScores p = Softmax3(logits);
    EXPECT_NEAR(FocalLoss(logits, label, 0.5f, 0.0f, nullptr), -0.5f * std::log(p[label]), 1e-6);
    // Focusing: a confident right answer costs far less than under cross-entropy.
    EXPECT_LT(FocalLoss(logits, label, 1.0f, 2.0f, nullptr), FocalLoss(logits, label, 1.0f, 0.0f, nullptr));
  }
}

TEST(PooledWindowsTest, ContiguousWindowMeansRmsNormalizedByHand) {
  // 3 rows of d = 2: fewer rows than windows -> one window per row.
  const float three[] = {3, 4, 0, 2, -1, 1};
  std::vector<float> w = PooledWindows(three, 3, 2);
  ASSERT_EQ(w.size(), 6u);
  // (3, 4): rms = sqrt(12.5) -> (0.8485, 1.1314)
  EXPECT_NEAR(w[0], 3 / std::sqrt(12.5f), 1e-5);
  EXPECT_NEAR(w[1], 4 / std::sqrt(12.5f), 1e-5);
  EXPECT_NEAR(w[2], 0, 1e-6);
  EXPECT_NEAR(w[3], std::sqrt(2.0f), 1e-5);
  // 16 rows of d = 1 valued 0..15 -> 8 windows of 2 rows: means 0.5, 2.5, ...; normalized to +-1.
  std::vector<float> ramp(16);
  for (int i = 0; i < 16; ++i) ramp[i] = static_cast<float>(i) - 7.0f;  // means -6.5, -4.5, ..., 7.5
  w = PooledWindows(ramp.data(), 16, 1);
  ASSERT_EQ(w.size(), 8u);
  for (int k = 0; k < 8; ++k) EXPECT_NEAR(w[k], k < 4 ? -1.0f : 1.0f, 1e-4) << k;
}

TEST(DecideRunsTest, SkipThresholdThenRepeatOverRun) {
  EXPECT_EQ(DecideRuns({0.6f, 0.3f, 0.1f}, 0.5), kSkipLayer);
  EXPECT_EQ(DecideRuns({0.6f, 0.3f, 0.1f}, 0.7), kRunLayer);
  EXPECT_EQ(DecideRuns({0.3f, 0.3f, 0.4f}, 0.5), kRepeatLayer);
  EXPECT_EQ(DecideRuns({0.2f, 0.5f, 0.3f}, 0.2), kSkipLayer);
  EXPECT_EQ(DecideRuns({0.2f, 0.5f, 0.3f}, 1.0), kRunLayer);
}

// Windows whose direction depends on the class, 80% "run": the class weights must let the minority
// classes be learned too.
std::vector<RouterExample> SyntheticExamples(int64_t d, int64_t n, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<RouterExample> out;
  for (int64_t i = 0; i < n; ++i) {
    const double u = rng.NextUniform();
    const int label = u < 0.1 ? kSkipLayer : u < 0.2 ? kRepeatLayer : kRunLayer;
    RouterExample ex{1, {}, label};
    std::vector<float> hidden(static_cast<size_t>(12 * d));
    for (int64_t r = 0; r < 12; ++r) {
      for (int64_t k = 0; k < d; ++k) {
        const float signal = k == label ? 2.0f : 0.0f;
        hidden[r * d + k] = signal + static_cast<float>(rng.NextUniform() - 0.5);
      }
    }
    ex.windows = PooledWindows(hidden.data(), 12, d);
    out.push_back(std::move(ex));
  }
  return out;
}

TEST(TrainLayerRouterTest, LearnsImbalancedClassesAndGeneralizes) {
  const int64_t d = 8;
  LayerRouter router = NewLayerRouter("synthetic", SmallModel(d), 3);
  const std::vector<RouterExample> train = SyntheticExamples(d, 300, 1), test = SyntheticExamples(d, 200, 2);
  RouterTrainOptions o;
  o.epochs = 30;
  ASSERT_THAT(TrainLayerRouter(train, o, &router), IsOk());
  const LayerRouterLayerInfo& info = router.info[1];
  EXPECT_GT(info.labels[kRunLayer], info.labels[kSkipLayer] * 4);
  EXPECT_GT(info.class_weights[kSkipLayer], 2 * info.class_weights[kRunLayer]);
  EXPECT_GE(info.train_accuracy, 0.95);
  int64_t correct = 0, skips = 0, skips_found = 0;
  for (const RouterExample& ex : test) {
    const int decided = DecideRuns(Softmax3(RouterLogits(router.layers[1], ex.windows, d)), 0.5);
    correct += decided == ex.label;
    skips += ex.label == kSkipLayer;
    skips_found += ex.label == kSkipLayer && decided == kSkipLayer;
  }
  EXPECT_GE(correct, 190) << "held-out accuracy";
  EXPECT_GE(skips_found, skips * 9 / 10);
  EXPECT_EQ(router.info[0].labels[kRunLayer], 0) << "layer 0 had no examples";
  RouterExample bad{1, std::vector<float>(5), kRunLayer};
  EXPECT_THAT(TrainLayerRouter({&bad, 1}, o, &router), StatusIs(absl::StatusCode::kInvalidArgument, "5 values"));
}

TEST(LayerRouterFileTest, RoundTripsAndRefusesAnotherModelBadShapesAndNonFiniteWeights) {
  const ModelIdentity model = SmallModel();
  LayerRouter router = NewLayerRouter("r", model, 5);
  router.tasks = {"add", "sort"};
  router.skip_threshold = 0.4;
  const std::string dir = TestDir("roundtrip").string();
  ASSERT_THAT(WriteLayerRouter(router, dir), IsOk());
  MOE_ASSERT_OK_AND_ASSIGN(LayerRouter back, ReadLayerRouter(dir));
  EXPECT_THAT(ValidateLayerRouter(back, model), IsOk());
  EXPECT_EQ(back.tasks, router.tasks);
  EXPECT_EQ(back.skip_threshold, 0.4);
  for (size_t l = 0; l < router.layers.size(); ++l) EXPECT_EQ(back.layers[l].fc1_weight, router.layers[l].fc1_weight);

  ModelIdentity other = model;
  other.router_fingerprint = "0000000000000001";
  EXPECT_THAT(ValidateLayerRouter(back, other), StatusIs(absl::StatusCode::kFailedPrecondition, "another model"));
  LayerRouter short_layer = back;
  short_layer.layers[2].fc2_bias.pop_back();
  EXPECT_THAT(ValidateLayerRouter(short_layer, model), StatusIs(absl::StatusCode::kInvalidArgument, "fc2.bias has 2 values"));
  LayerRouter nan = back;
  nan.layers[0].fc1_weight[3] = std::nanf("");
  EXPECT_THAT(ValidateLayerRouter(nan, model), StatusIs(absl::StatusCode::kInvalidArgument, "not finite"));
  LayerRouter missing_layer = back;
  missing_layer.layers.pop_back();
  EXPECT_THAT(ValidateLayerRouter(missing_layer, model), StatusIs(absl::StatusCode::kInvalidArgument, "has 2 layers"));

  // A manifest that claims another hidden size no longer matches the tensors.
  nlohmann::json manifest = nlohmann::json::parse(std::ifstream(fs::path(dir) / "manifest.json"));
  manifest["model"]["hidden_size"] = 16;
  std::ofstream(fs::path(dir) / "manifest.json") << manifest.dump();
  EXPECT_THAT(ReadLayerRouter(dir), StatusIs(absl::StatusCode::kInvalidArgument, "wrong shape for hidden size 16"));
  std::ofstream(fs::path(dir) / "manifest.json") << "{not json";
  EXPECT_THAT(ReadLayerRouter(dir), StatusIs(absl::StatusCode::kInvalidArgument, "manifest.json"));
  EXPECT_THAT(ReadLayerRouter(TestDir("nothing").string()), StatusIs(absl::StatusCode::kNotFound, "no layer router"));
}

TEST(LayerPathSearchTest, FindsTheShortestCorrectPathOfAnOracle) {
  // Right iff layer 2 runs: the shortest correct path runs layer 2 alone.
  LayerSearchOptions o;
  o.simulations = 400;
  LayerPathSearch search(4, o);
  int64_t asked = 0;
  while (auto path = search.Next()) {
    ++asked;
    search.Report((*path)[2] >= 1);
  }
  EXPECT_EQ(search.full_path_correct(), true);
  ASSERT_TRUE(search.ShortestCorrect().has_value());
  EXPECT_EQ(*search.ShortestCorrect(), (LayerPath{0, 0, 1, 0}));
  EXPECT_EQ(asked, search.generations()) << "each path is generated once";
  EXPECT_LT(asked, 400);

  // Nothing right: no label. Repeating layer 1 is the only fix: found.
  LayerPathSearch hopeless(4, o);
  while (hopeless.Next()) hopeless.Report(false);
  EXPECT_FALSE(hopeless.ShortestCorrect().has_value());
  EXPECT_EQ(hopeless.full_path_correct(), false);
  LayerPathSearch repeat(4, o);
  while (auto path = repeat.Next()) repeat.Report((*path)[1] == kRepeatLayer);
  ASSERT_TRUE(repeat.ShortestCorrect().has_value());
  EXPECT_EQ((*repeat.ShortestCorrect())[1], kRepeatLayer);
  EXPECT_EQ(LayersExecuted(*repeat.ShortestCorrect(), 4), 2) << LayerPathString(*repeat.ShortestCorrect(), 4);
}

// The routers' decisions are what the engine runs: a router set built to skip layer 1 and repeat
// layer 2 gives exactly the logits of that fixed path.
TEST(LayerRoutingPolicyTest, TheEngineRunsThePathTheRoutersChoose) {
  const fs::path dir = TestDir("model");
  RandomCheckpointOptions o;
  o.num_layers = 3;
  o.tokenizer = false;
  ASSERT_THAT(WriteRandomCheckpoint(dir.string(), o), IsOk());
  ThreadPool pool(1);
  MOE_ASSERT_OK_AND_ASSIGN(auto source, ModelSource::Open(dir.string()));
  MOE_ASSERT_OK_AND_ASSIGN(ModelIdentity identity, IdentifyModel(*source));
  MOE_ASSERT_OK_AND_ASSIGN(auto weights, LoadModelWeights(std::move(source), {}, &pool));
  Model model(std::move(weights), &pool);
  LayerRouter router = NewLayerRouter("fixed", identity, 1);
  const LayerPath wanted = {1, 0, 2};
  for (int64_t l = 0; l < 3; ++l) {
    std::fill(router.layers[l].fc2_weight.begin(), router.layers[l].fc2_weight.end(), 0.0f);
    router.layers[l].fc2_bias = {0.0f, 0.0f, 0.0f};
    router.layers[l].fc2_bias[wanted[l]] = 5.0f;
  }
  ASSERT_THAT(ValidateLayerRouter(router, identity), IsOk());
  LayerRoutingPolicy policy(&router, 0.5);
  const std::vector<int32_t> prompt = {1, 8, 99, 3, 14, 15};
  auto routed = model.NewCache();
  ForwardInput in{routed.get(), prompt, true, nullptr, &policy};
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<float> routed_logits, model.Forward({&in, 1}));
  EXPECT_EQ(routed->layer_path(), wanted);
  auto fixed = model.NewCache();
  ASSERT_THAT(fixed->SetLayerPath(wanted), IsOk());
  ForwardInput fixed_in{fixed.get(), prompt, true};
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<float> fixed_logits, model.Forward({&fixed_in, 1}));
  EXPECT_EQ(routed_logits, fixed_logits);
  // A threshold above the routers' skip probability keeps layer 1.
  LayerRoutingPolicy cautious(&router, 0.999);
  auto kept = model.NewCache();
  ForwardInput kept_in{kept.get(), prompt, false, nullptr, &cautious};
  ASSERT_THAT(model.Forward({&kept_in, 1}), IsOk());
  EXPECT_EQ(kept->layer_path(), (LayerPath{1, 1, 2}));
}

}  // namespace
}  // namespace moe
