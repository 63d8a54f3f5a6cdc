// moe-generate: single-process generation on a Hugging Face MoE checkpoint.
//   moe-generate --model DIR --prompt TEXT --max-tokens N [--temperature T --top-p P --top-k K --seed S]
// Prints the completion on stdout and throughput on stderr; exits 1 with a message on bad input.
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/flags.h"
#include "common/log.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "checkpoint/tokenizer.h"
#include "engine/generator.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory (config.json, *.safetensors, tokenizer.model)");
ABSL_FLAG(std::string, prompt, "", "prompt text (needs tokenizer.model)");
ABSL_FLAG(std::string, prompt_ids, "", "prompt as comma-separated token ids (instead of --prompt)");
ABSL_FLAG(int64_t, max_tokens, 32, "tokens to generate");
ABSL_FLAG(double, temperature, 0.0, "0 = greedy");
ABSL_FLAG(double, top_p, 1.0, "nucleus sampling mass");
ABSL_FLAG(int32_t, top_k, 0, "0 = no limit");
ABSL_FLAG(uint64_t, seed, 0, "sampling seed");
ABSL_FLAG(int32_t, threads, 0, "worker threads (0 = one per core)");
ABSL_FLAG(std::string, weights, "auto", "packed weight type: auto (as stored), bf16, f32");
ABSL_FLAG(bool, print_ids, false, "also print the generated token ids on stderr");

using moe::Fail;

int main(int argc, char** argv) {
  moe::LogProgramName() = "moe-generate";
  moe::ParseFlags(argc, argv);
  const std::string dir = absl::GetFlag(FLAGS_model);
  if (dir.empty()) return Fail("--model is required");
  auto source = moe::ModelSource::Open(dir);
  if (!source.ok()) return Fail(source.status().ToString());
  std::shared_ptr<const moe::ModelSource> shared_source = std::move(*source);
  const moe::ModelConfig& config = shared_source->config();

  std::unique_ptr<moe::Tokenizer> tokenizer;
  if (!shared_source->tokenizer_path().empty()) {
    auto t = moe::Tokenizer::Load(shared_source->tokenizer_path());
    if (!t.ok()) return Fail(t.status().ToString());
    tokenizer = std::move(*t);
  }
  moe::GenerationRequest request;
  if (!absl::GetFlag(FLAGS_prompt_ids).empty()) {
    for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_prompt_ids), ',', absl::SkipWhitespace())) {
      int32_t id;
      if (!absl::SimpleAtoi(part, &id)) return Fail("--prompt_ids: '" + std::string(part) + "' is not an integer");
      request.prompt.push_back(id);
    }
  } else {
    if (absl::GetFlag(FLAGS_prompt).empty()) return Fail("give --prompt or --prompt_ids");
    if (tokenizer == nullptr) return Fail(dir + " has no tokenizer.model; use --prompt_ids");
    auto ids = tokenizer->Encode(absl::GetFlag(FLAGS_prompt));
    if (!ids.ok()) return Fail(ids.status().ToString());
    if (config.bos_token_id >= 0) request.prompt.push_back(static_cast<int32_t>(config.bos_token_id));
    request.prompt.insert(request.prompt.end(), ids->begin(), ids->end());
  }
  request.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  request.sampling.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
  request.sampling.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  request.sampling.top_k = absl::GetFlag(FLAGS_top_k);
  request.sampling.seed = absl::GetFlag(FLAGS_seed);

  moe::LoadOptions load;
  const std::string weights = absl::GetFlag(FLAGS_weights);
  if (weights == "bf16") load.storage = moe::DType::kBF16;
  else if (weights == "f32") load.storage = moe::DType::kF32;
  else if (weights != "auto") return Fail("--weights must be auto, bf16 or f32");

  moe::ThreadPool pool(absl::GetFlag(FLAGS_threads));
  auto loaded = moe::LoadModelWeights(shared_source, load, &pool);
  if (!loaded.ok()) return Fail(loaded.status().ToString());
  moe::Model model(std::move(*loaded), &pool);
  moe::GenerationStats stats;
  auto results = moe::Generate(model, {request}, &stats);
  if (!results.ok()) return Fail(results.status().ToString());
  const std::vector<int32_t>& tokens = (*results)[0].tokens;
  if (tokenizer != nullptr) {
    std::cout << tokenizer->Decode(tokens) << std::endl;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) std::cout << (i ? "," : "") << tokens[i];
    std::cout << std::endl;
  }
  if (absl::GetFlag(FLAGS_print_ids)) {
    std::cerr << "ids:";
    for (int32_t t : tokens) std::cerr << " " << t;
    std::cerr << "\n";
  }
  std::cerr << "prompt " << stats.prompt_tokens << " tokens in " << stats.prefill_seconds << " s ("
            << stats.prompt_tokens / std::max(1e-9, stats.prefill_seconds) << " tok/s); generated "
            << stats.generated_tokens << " tokens, decode " << stats.decode_steps / std::max(1e-9, stats.decode_seconds)
            << " tok/s\n";
  return 0;
}
