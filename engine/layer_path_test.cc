// Layer paths (Dr.LLM skip / repeat) against an independent construction: a model whose checkpoint lays
// its layers out as the path does (skipped layers left out, repeated layers copied) must give the same
// logits, prefill and decode, since a repeated layer keeps KV entries of its own.
#include <filesystem>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/random_checkpoint.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/safetensors_writer.h"
#include "common/status.h"
#include "common/status_matchers.h"
#include "common/test_dir.h"
#include "engine/generator.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

namespace fs = std::filesystem;
using ::moe::testing::IsOk;
using ::moe::testing::StatusIs;

fs::path TestDir(const std::string& name) {
  return ::moe::testing::ScratchDir("layer_path_test", name);
}

// Copies the single-file checkpoint at `src` so that layer i of the copy is layer source_layers[i].
std::string RelayeredCheckpoint(const std::string& src, const std::vector<int>& source_layers) {
  std::string name = "relayered";
  for (int l : source_layers) absl::StrAppend(&name, "_", l);
  const fs::path dir = TestDir(name);
  fs::create_directories(dir);
  nlohmann::json config = nlohmann::json::parse(std::ifstream(fs::path(src) / "config.json"));
  config["num_hidden_layers"] = source_layers.size();
  std::ofstream(dir / "config.json") << config.dump();

  auto file = SafetensorsFile::Open((fs::path(src) / "model.safetensors").string());
  EXPECT_THAT(file, IsOk());
  std::vector<TensorSpec> specs;
  std::vector<std::string> source_names;
  const std::string prefix = "model.layers.";
  for (const auto& [tensor, info] : (*file)->tensors()) {
    if (tensor.rfind(prefix, 0) != 0) {
      specs.push_back({tensor, DType::kF32, info.shape});
      source_names.push_back(tensor);
      continue;
    }
    const size_t dot = tensor.find('.', prefix.size());
    int layer = -1;
    EXPECT_TRUE(absl::SimpleAtoi(tensor.substr(prefix.size(), dot - prefix.size()), &layer)) << tensor;
    for (size_t i = 0; i < source_layers.size(); ++i) {
      if (source_layers[i] != layer) continue;
      specs.push_back({absl::StrCat(prefix, i, tensor.substr(dot)), DType::kF32, info.shape});
      source_names.push_back(tensor);
    }
  }
  const SafetensorsFile& f = **file;
  EXPECT_THAT(WriteSafetensors((dir / "model.safetensors").string(), specs,
                               [&](size_t i, std::vector<float>* values) {
                                 TensorView view = *f.Get(source_names[i]);
                                 values->resize(static_cast<size_t>(view.num_elements()));
                                 for (size_t k = 0; k < values->size(); ++k) {
                                   (*values)[k] = LoadAsFloat(view.data, view.dtype, k);
                                 }
                               }),
              IsOk());
  return dir.string();
}

std::unique_ptr<Model> LoadModel(const std::string& dir, ThreadPool* pool) {
  auto source = ModelSource::Open(dir);
  EXPECT_THAT(source, IsOk());
  auto weights = LoadModelWeights(std::move(*source), LoadOptions{}, pool);
  EXPECT_THAT(weights, IsOk());
  return std::make_unique<Model>(std::move(*weights), pool);
}

// Source layer of each run of a path: {1, 0, 2} -> {0, 2, 2}.
std::vector<int> Unrolled(const LayerPath& path) {
  std::vector<int> layers;
  for (size_t l = 0; l < path.size(); ++l) {
    for (int r = 0; r < path[l]; ++r) layers.push_back(static_cast<int>(l));
  }
  return layers;
}

class LayerPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RandomCheckpointOptions o;
    o.num_layers = 3;
    o.tokenizer = false;
    dir_ = TestDir("base").string();
    fs::remove_all(dir_);
    ASSERT_THAT(WriteRandomCheckpoint(dir_, o), IsOk());
    model_ = LoadModel(dir_, &pool_);
  }

  // Prefill logits of every prompt token, then `decode` greedy-free steps feeding fixed tokens.
  std::vector<float> Run(Model& model, const LayerPath& path, const std::vector<int32_t>& prompt, int decode) {
    auto cache = model.NewCache();
    EXPECT_THAT(cache->SetLayerPath(path), IsOk());
    ForwardInput in{cache.get(), prompt, /*all_logits=*/true};
    auto logits = model.Forward({&in, 1});
    EXPECT_THAT(logits, IsOk());
    std::vector<float> all = *logits;
    for (int i = 0; i < decode; ++i) {
      const int32_t token = 7 + 13 * i;
      ForwardInput step{cache.get(), std::span<const int32_t>(&token, 1)};
      logits = model.Forward({&step, 1});
      EXPECT_THAT(logits, IsOk());
      all.insert(all.end(), logits->begin(), logits->end());
    }
    return all;
  }

  ThreadPool pool_{2};
  std::string dir_;
  std::unique_ptr<Model> model_;
};

void ExpectNear(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 2e-5) << what << " at " << i;
}

TEST_F(LayerPathTest, SkipAndRepeatEqualTheModelWithLayersLaidOutSo) {
  const std::vector<int32_t> prompt = {1, 17, 300, 42, 5, 99, 250};
  for (const LayerPath& path : {LayerPath{1, 0, 1}, LayerPath{1, 2, 1}, LayerPath{2, 0, 2}, LayerPath{0, 1, 2}}) {
    const std::string what = LayerPathString(path, 3);
    auto laid_out = LoadModel(RelayeredCheckpoint(dir_, Unrolled(path)), &pool_);
    ExpectNear(Run(*model_, path, prompt, 4), Run(*laid_out, {}, prompt, 4), what);
  }
  // And the all-ones path is the model itself, bit for bit.
  EXPECT_EQ(Run(*model_, {1, 1, 1}, prompt, 2), Run(*model_, {}, prompt, 2));
}

TEST_F(LayerPathTest, RaggedBatchOfDifferentPathsEqualsEachAlone) {
  const std::vector<std::vector<int32_t>> prompts = {{1, 5, 9}, {1, 200, 3, 4, 5, 6}, {1}, {1, 44, 45, 46}};
  const std::vector<LayerPath> paths = {{1, 0, 1}, {}, {2, 1, 0}, {0, 0, 0}};
  const int64_t v = model_->config().vocab_size;
  std::vector<std::unique_ptr<KvCache>> caches;
  std::vector<ForwardInput> batch;
  for (size_t b = 0; b < prompts.size(); ++b) {
    caches.push_back(model_->NewCache());
    ASSERT_THAT(caches.back()->SetLayerPath(paths[b]), IsOk());
    batch.push_back({caches.back().get(), prompts[b]});
  }
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<float> together, model_->Forward(batch));
  const int32_t next = 11;
  for (auto& in : batch) in.tokens = std::span<const int32_t>(&next, 1);
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<float> together_decode, model_->Forward(batch));
  for (size_t b = 0; b < prompts.size(); ++b) {
    auto cache = model_->NewCache();
    ASSERT_THAT(cache->SetLayerPath(paths[b]), IsOk());
    ForwardInput alone{cache.get(), prompts[b]};
    MOE_ASSERT_OK_AND_ASSIGN(std::vector<float> single, model_->Forward({&alone, 1}));
    alone.tokens = std::span<const int32_t>(&next, 1);
    MOE_ASSERT_OK_AND_ASSIGN(std::vector<float> single_decode, model_->Forward({&alone, 1}));
    for (int64_t i = 0; i < v; ++i) {
      ASSERT_NEAR(together[b * v + i], single[i], 1e-5) << "seq " << b;
      ASSERT_NEAR(together_decode[b * v + i], single_decode[i], 1e-5) << "seq " << b;
    }
  }
  EXPECT_EQ(caches[3]->layers_per_token(), 0);
  EXPECT_EQ(caches[2]->layers_per_token(), 3);
  EXPECT_EQ(caches[1]->layers_per_token(), 3);
}

// Records what it was asked and answers from a fixed path.
class ScriptedPolicy : public LayerPathPolicy {
 public:
  explicit ScriptedPolicy(LayerPath answers) : answers_(std::move(answers)) {}
  int Decide(int64_t layer, const float* hidden, int64_t rows) const override {
    asked.push_back({layer, rows});
    first_values.push_back(hidden[0]);
    return answers_[layer];
  }
  mutable std::vector<std::pair<int64_t, int64_t>> asked;
  mutable std::vector<float> first_values;

 private:
  LayerPath answers_;
};

TEST_F(LayerPathTest, PolicyDecidesOnceAtPrefillAndTheSequenceKeepsItsPath) {
  const std::vector<int32_t> prompt = {1, 17, 300, 42, 5};
  ScriptedPolicy policy({2, 0, 1});
  auto cache = model_->NewCache();
  ForwardInput in{cache.get(), prompt, /*all_logits=*/true, nullptr, &policy};
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<float> decided, model_->Forward({&in, 1}));
  EXPECT_EQ(cache->layer_path(), (LayerPath{2, 0, 1}));
  EXPECT_EQ(cache->layers_per_token(), 3);
  ASSERT_EQ(policy.asked.size(), 3u);
  for (int64_t l = 0; l < 3; ++l) EXPECT_EQ(policy.asked[l], std::make_pair(l, int64_t{5}));
  // Layer 1 is skipped, so layer 2 sees what layer 1 saw: layer 0's output after two runs.
  EXPECT_NE(policy.first_values[1], policy.first_values[0]);
  EXPECT_EQ(policy.first_values[2], policy.first_values[1]);
  const int32_t next = 9;
  ForwardInput step{cache.get(), std::span<const int32_t>(&next, 1), false, nullptr, &policy};
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<float> decoded, model_->Forward({&step, 1}));
  EXPECT_EQ(policy.asked.size(), 3u) << "decode must not ask again";
  // Same as fixing the path up front.
  auto fixed = Run(*model_, {2, 0, 1}, prompt, 0);
  EXPECT_EQ(decided, fixed);
}

TEST_F(LayerPathTest, BadPathsAndBadPolicyAnswersAreRefusedAndLeaveNoPath) {
  auto cache = model_->NewCache();
  EXPECT_THAT(cache->SetLayerPath({1, 1}), StatusIs(absl::StatusCode::kInvalidArgument, "has 2 entries"));
  EXPECT_THAT(cache->SetLayerPath({1, 3, 1}), StatusIs(absl::StatusCode::kInvalidArgument, "entry 1 is 3"));
  ScriptedPolicy bad({1, 7, 1});
  const std::vector<int32_t> prompt = {1, 2, 3};
  ForwardInput in{cache.get(), prompt, false, nullptr, &bad};
  EXPECT_THAT(model_->Forward({&in, 1}), StatusIs(absl::StatusCode::kInternal, "chose 7 runs of layer 1"));
  EXPECT_TRUE(cache->layer_path().empty());
  EXPECT_EQ(cache->length(), 0);
  ForwardInput plain{cache.get(), prompt};
  ASSERT_THAT(model_->Forward({&plain, 1}), IsOk());
  EXPECT_THAT(cache->SetLayerPath({1, 0, 1}), StatusIs(absl::StatusCode::kFailedPrecondition, "before the first token"));
}

}  // namespace
}  // namespace moe
