#include "engine/model.h"

#include <cmath>
#include <filesystem>

#include "checkpoint/random_checkpoint.h"
#include "common/status.h"
#include "common/status_matchers.h"
#include "common/test_dir.h"
#include "engine/generator.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::moe::testing::IsOk;
using ::moe::testing::StatusIs;

std::string MakeCheckpoint(const std::string& name, const RandomCheckpointOptions& o) {
  const auto dir = ::moe::testing::ScratchDir("model_test", name);
  std::filesystem::remove_all(dir);
  EXPECT_THAT(WriteRandomCheckpoint(dir.string(), o), IsOk());
  return dir.string();
}

RandomCheckpointOptions Qwen() {
  RandomCheckpointOptions o;
  o.model_type = "qwen2_moe";
  o.num_layers = 3;
  o.shared_expert_ffn_size = 80;
  o.mlp_only_layers = {1};
  o.norm_topk_prob = false;
  o.tokenizer = false;
  return o;
}

RandomCheckpointOptions Mixtral() {
  RandomCheckpointOptions o;
  o.tokenizer = false;
  return o;
}

class ModelTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const RandomCheckpointOptions o = GetParam() == "mixtral" ? Mixtral() : Qwen();
    auto source = ModelSource::Open(MakeCheckpoint(GetParam(), o));
    ASSERT_THAT(source, IsOk());
    auto weights = LoadModelWeights(std::move(*source), LoadOptions{}, &pool_);
    ASSERT_THAT(weights, IsOk());
    model_ = std::make_unique<Model>(std::move(*weights), &pool_);
  }
  ThreadPool pool_{2};
  std::unique_ptr<Model> model_;
};

TEST_P(ModelTest, DecodeWithKvCacheEqualsFullRecompute) {
  const std::vector<int32_t> prompt = {1, 17, 300, 42, 5, 99, 250, 3, 8, 77, 400, 12};
  const int64_t v = model_->config().vocab_size;
  auto full_cache = model_->NewCache();
  ForwardInput full{full_cache.get(), prompt, /*all_logits=*/true};
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<float> full_logits, model_->Forward({&full, 1}));
  ASSERT_EQ(full_logits.size(), prompt.size() * v);

  auto cache = model_->NewCache();
  ForwardInput prefill{cache.get(), std::span<const int32_t>(prompt).first(7)};
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<float> logits, model_->Forward({&prefill, 1}));
  for (size_t pos = 6; pos < prompt.size(); ++pos) {
    if (pos > 6) {
      ForwardInput step{cache.get(), std::span<const int32_t>(&prompt[pos], 1)};
      MOE_ASSERT_OK_AND_ASSIGN(logits, model_->Forward({&step, 1}));
    }
    for (int64_t i = 0; i < v; ++i) ASSERT_NEAR(logits[i], full_logits[pos * v + i], 1e-5) << "pos " << pos;
  }
  EXPECT_EQ(cache->length(), static_cast<int64_t>(prompt.size()));
}

TEST_P(ModelTest, RaggedBatchEqualsEachSequenceAlone) {
  const std::vector<std::vector<int32_t>> prompts = {{1, 5, 9}, {1, 200, 3, 4, 5, 6, 7, 8, 9}, {1}, {1, 44, 45, 46, 47}};
  const int64_t v = model_->config().vocab_size;
  std::vector<std::unique_ptr<KvCache>> caches;
  std::vector<ForwardInput> batch;
  for (const auto& p : prompts) {
    caches.push_back(model_->NewCache());
    batch.push_back({caches.back().get(), p});
  }
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<float> together, model_->Forward(batch));
  for (size_t b = 0; b < prompts.size(); ++b) {
    auto cache = model_->NewCache();
    ForwardInput alone{cache.get(), prompts[b]};
    MOE_ASSERT_OK_AND_ASSIGN(std::vector<float> single, model_->Forward({&alone, 1}));
    for (int64_t i = 0; i < v; ++i) ASSERT_NEAR(together[b * v + i], single[i], 1e-5) << "seq " << b;
  }
}

TEST_P(ModelTest, RejectsBadTokensAndOverlongSequencesWithoutTouchingTheCache) {
  auto cache = model_->NewCache();
  const std::vector<int32_t> bad = {1, static_cast<int32_t>(model_->config().vocab_size)};
  ForwardInput in{cache.get(), bad};
  EXPECT_THAT(model_->Forward({&in, 1}), StatusIs(absl::StatusCode::kInvalidArgument, "outside the vocabulary"));
  EXPECT_EQ(cache->length(), 0);
  std::vector<int32_t> too_long(static_cast<size_t>(model_->config().max_position_embeddings + 1), 3);
  ForwardInput long_in{cache.get(), too_long};
  EXPECT_THAT(model_->Forward({&long_in, 1}), StatusIs(absl::StatusCode::kInvalidArgument, "exceeds the context"));
  ForwardInput empty{cache.get(), {}};
  EXPECT_THAT(model_->Forward({&empty, 1}), StatusIs(absl::StatusCode::kInvalidArgument, "no tokens"));
}

TEST_P(ModelTest, BatchedGenerationEqualsOneAtATime) {
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 3; ++i) {
    GenerationRequest r;
    r.prompt = {1, 10 + i, 20 + 3 * i, 7};
    r.max_tokens = 12;
    r.stop_at_eos = false;
    if (i == 2) r.sampling = {.temperature = 0.8f, .top_k = 50, .top_p = 0.9f, .seed = 5};
    requests.push_back(r);
  }
  MOE_ASSERT_OK_AND_ASSIGN(auto together, Generate(*model_, requests));
  for (size_t i = 0; i < requests.size(); ++i) {
    MOE_ASSERT_OK_AND_ASSIGN(auto alone, Generate(*model_, {requests[i]}));
    EXPECT_EQ(together[i].tokens, alone[0].tokens) << i;
    EXPECT_EQ(together[i].tokens.size(), 12u);
  }
}

// What a resumed request relies on (the coordinator re-prefills prompt + streamed tokens on a new shard
// map): the logits of a position do not depend on whether it was decoded or prefilled, bit for bit,
// so a greedy continuation is the same tokens.
TEST_P(ModelTest, PrefillOfPromptPlusGeneratedTokensContinuesBitForBit) {
  GenerationRequest whole;
  whole.prompt = {1, 17, 300, 42, 5};
  whole.max_tokens = 40;
  whole.stop_at_eos = false;
  MOE_ASSERT_OK_AND_ASSIGN(auto reference, Generate(*model_, {whole}));
  const std::vector<int32_t>& tokens = reference[0].tokens;
  for (size_t k : {1u, 9u, 30u}) {
    GenerationRequest resumed = whole;
    resumed.prompt.insert(resumed.prompt.end(), tokens.begin(), tokens.begin() + k);
    resumed.max_tokens = whole.max_tokens - static_cast<int64_t>(k);
    MOE_ASSERT_OK_AND_ASSIGN(auto rest, Generate(*model_, {resumed}));
    EXPECT_EQ(rest[0].tokens, std::vector<int32_t>(tokens.begin() + k, tokens.end())) << "resumed after " << k;
  }
  // And the logits themselves: decode step by step vs one prefill of the same tokens.
  std::vector<int32_t> sequence = whole.prompt;
  sequence.insert(sequence.end(), tokens.begin(), tokens.begin() + 12);
  const int64_t v = model_->config().vocab_size;
  auto decoded = model_->NewCache();
  std::vector<float> last;
  for (size_t pos = 0; pos < sequence.size(); ++pos) {
    ForwardInput step{decoded.get(), std::span<const int32_t>(&sequence[pos], 1)};
    MOE_ASSERT_OK_AND_ASSIGN(last, model_->Forward({&step, 1}));
  }
  auto prefilled = model_->NewCache();
  ForwardInput all{prefilled.get(), sequence};
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<float> once, model_->Forward({&all, 1}));
  float worst = 0;
  for (int64_t i = 0; i < v; ++i) worst = std::max(worst, std::abs(once[i] - last[i]));
  EXPECT_EQ(worst, 0.0f) << "largest logit difference between decode and prefill";
}

INSTANTIATE_TEST_SUITE_P(BothFamilies, ModelTest, ::testing::Values("mixtral", "qwen2_moe"));

TEST(RoutingTest, SoftmaxTopKAndRenormalizationByHand) {
  ModelConfig c;
  c.num_experts = 4;
  c.top_k = 2;
  // probabilities proportional to 1, 2, 3, 4 -> 0.1, 0.2, 0.3, 0.4
  const float logits[] = {std::log(1.0f), std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  c.norm_topk_prob = false;
  RoutingDecision r = ComputeRouting(logits, 1, c);
  EXPECT_EQ(r.experts, (std::vector<int32_t>{3, 2}));
  EXPECT_NEAR(r.weights[0], 0.4f, 1e-6);
  EXPECT_NEAR(r.weights[1], 0.3f, 1e-6);
  c.norm_topk_prob = true;
  r = ComputeRouting(logits, 1, c);
  EXPECT_NEAR(r.weights[0], 4.0f / 7.0f, 1e-6);
  EXPECT_NEAR(r.weights[1], 3.0f / 7.0f, 1e-6);
}

TEST(PartialLoadTest, LoadsOnlyOwnedExpertsAndRefusesToRunOthers) {
  const std::string dir = MakeCheckpoint("partial", Mixtral());
  ThreadPool pool(1);
  MOE_ASSERT_OK_AND_ASSIGN(auto full_source, ModelSource::Open(dir));
  MOE_ASSERT_OK_AND_ASSIGN(auto full, LoadModelWeights(std::move(full_source), {}, &pool));
  MOE_ASSERT_OK_AND_ASSIGN(auto half_source, ModelSource::Open(dir));
  LoadOptions half_options;
  half_options.owns_expert = [](int64_t, int64_t e) { return e % 2 == 0; };
  MOE_ASSERT_OK_AND_ASSIGN(auto half, LoadModelWeights(std::move(half_source), half_options, &pool));
  EXPECT_LT(half->packed_bytes(), full->packed_bytes() * 3 / 4);
  EXPECT_FALSE(half->layers[0].moe.experts[1].loaded());
  Model model(std::move(half), &pool);
  auto cache = model.NewCache();
  std::vector<int32_t> prompt;
  for (int i = 0; i < 64; ++i) prompt.push_back(i);  // enough tokens to reach an odd expert
  ForwardInput in{cache.get(), prompt};
  EXPECT_THAT(model.Forward({&in, 1}), StatusIs(absl::StatusCode::kFailedPrecondition, "is not loaded here"));
}

}  // namespace
}  // namespace moe
