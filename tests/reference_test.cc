// Compares the C++ engine with tools/hf_reference.py (an independent PyTorch implementation of the
// Hugging Face forward pass) on the same checkpoint: batched prefill of every prompt, then batched
// greedy decode. Logits of the first steps must agree within --tolerance relative to their scale (the
// largest |reference logit|, at least 1: F32 rounding grows with the values), and the greedy tokens exactly.
//   reference_test --model DIR --prompts FILE --reference FILE [--tolerance 2.5e-5]
#include <cmath>
#include <fstream>
#include <iostream>
#include <sstream>

#include "common/status.h"
#include "common/status_matchers.h"
#include "engine/generator.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

std::string g_model, g_prompts, g_reference;
double g_tolerance = 2.5e-5;

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

TEST(ReferenceTest, LogitsAndGreedyTokensMatchPyTorch) {
  ThreadPool pool(2);
  MOE_ASSERT_OK_AND_ASSIGN(auto source, ModelSource::Open(g_model));
  MOE_ASSERT_OK_AND_ASSIGN(auto weights, LoadModelWeights(std::move(source), LoadOptions{}, &pool));
  Model model(std::move(weights), &pool);
  const int64_t vocab = model.config().vocab_size;

  const auto prompts = ReadJson(g_prompts).get<std::vector<std::vector<int32_t>>>();
  const nlohmann::json reference = ReadJson(g_reference)["results"];
  ASSERT_EQ(reference.size(), prompts.size());
  ASSERT_GE(prompts.size(), 10u);
  const size_t steps = reference[0]["tokens"].size();
  const size_t logit_steps = reference[0]["logits"].size();

  std::vector<std::unique_ptr<KvCache>> caches;
  std::vector<ForwardInput> inputs;
  for (const auto& p : prompts) {
    caches.push_back(model.NewCache());
    inputs.push_back({caches.back().get(), p});
  }
  std::vector<std::vector<int32_t>> generated(prompts.size());
  double max_diff = 0, logit_scale = 1;
  for (size_t step = 0; step < steps; ++step) {
    MOE_ASSERT_OK_AND_ASSIGN(std::vector<float> logits, model.Forward(inputs));
    for (size_t b = 0; b < prompts.size(); ++b) {
      std::span<const float> row(logits.data() + b * vocab, static_cast<size_t>(vocab));
      if (step < logit_steps) {
        const auto& ref = reference[b]["logits"][step];
        ASSERT_EQ(static_cast<int64_t>(ref.size()), vocab);
        for (int64_t i = 0; i < vocab; ++i) {
          max_diff = std::max(max_diff, std::fabs(row[i] - ref[i].get<double>()));
          logit_scale = std::max(logit_scale, std::fabs(ref[i].get<double>()));
        }
      }
      generated[b].push_back(ArgMax(row));
    }
    inputs.clear();
    for (size_t b = 0; b < prompts.size(); ++b) {
      inputs.push_back({caches[b].get(), std::span<const int32_t>(&generated[b].back(), 1)});
    }
  }
  std::cout << "max |logit difference| over " << prompts.size() << " prompts x " << logit_steps << " steps: " << max_diff
            << ", largest |logit| " << logit_scale << ": " << max_diff / logit_scale << " of it (tolerance " << g_tolerance
            << ")\n";
  EXPECT_LE(max_diff, g_tolerance * logit_scale);
  for (size_t b = 0; b < prompts.size(); ++b) {
    EXPECT_EQ(generated[b], reference[b]["tokens"].get<std::vector<int32_t>>()) << "prompt " << b;
  }
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model") moe::g_model = value;
    else if (flag == "--prompts") moe::g_prompts = value;
    else if (flag == "--reference") moe::g_reference = value;
    else if (flag == "--tolerance") moe::g_tolerance = std::stod(value);
    else {
      std::cerr << "reference_test: unknown flag " << flag << "\n";
      return 2;
    }
  }
  if (moe::g_model.empty() || moe::g_prompts.empty() || moe::g_reference.empty()) {
    std::cerr << "usage: reference_test --model DIR --prompts FILE --reference FILE [--tolerance X]\n";
    return 2;
  }
  return RUN_ALL_TESTS();
}
