#include "eval/engine_backend.h"

#include "common/status.h"
#include "engine/generator.h"

namespace moe {

absl::StatusOr<std::vector<std::string>> EngineBackend::CompleteGreedy(const std::vector<std::string>& prompts,
                                                                       int64_t max_tokens) {
  std::vector<GenerationRequest> requests;
  for (const std::string& p : prompts) {
    GenerationRequest r;
    if (model_->config().bos_token_id >= 0) r.prompt.push_back(static_cast<int32_t>(model_->config().bos_token_id));
    MOE_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer_->Encode(p));
    r.prompt.insert(r.prompt.end(), ids.begin(), ids.end());
    r.max_tokens = max_tokens;
    requests.push_back(std::move(r));
  }
  MOE_ASSIGN_OR_RETURN(std::vector<GenerationResult> results, Generate(*model_, requests));
  std::vector<std::string> out;
  for (GenerationResult& r : results) {
    if (r.finish == FinishReason::kEos) r.tokens.pop_back();
    out.push_back(tokenizer_->Decode(r.tokens));
  }
  return out;
}

std::vector<std::vector<int64_t>> EngineBackend::TakeExpertUsage() {
  auto usage = model_->expert_usage();
  model_->ResetExpertUsage();
  return usage;
}

}  // namespace moe
