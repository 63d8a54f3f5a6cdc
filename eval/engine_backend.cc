#include "eval/engine_backend.h"

#include "common/status.h"
#include "engine/generator.h"
#include "router/expert_map.h"

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
    r.slot_routing = slot_routing_ ? &*slot_routing_ : nullptr;
    r.layer_policy = layer_policy_.get();
    prompt_tokens_ += static_cast<int64_t>(r.prompt.size());
    requests.push_back(std::move(r));
  }
  MOE_ASSIGN_OR_RETURN(std::vector<GenerationResult> results, Generate(*model_, requests));
  std::vector<std::string> out;
  for (GenerationResult& r : results) {
    completion_tokens_ += static_cast<int64_t>(r.tokens.size());
    layers_executed_ += LayersExecuted(r.layer_path, model_->config().num_layers) * static_cast<int64_t>(r.tokens.size());
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

absl::Status EngineBackend::BeginTask(const std::string& task) {
  if (expert_map_pattern_.empty()) return absl::OkStatus();
  slot_routing_.reset();
  RemoveMergedExperts(model_->mutable_weights());
  MOE_ASSIGN_OR_RETURN(ExpertMap map, ReadExpertMap(ForTask(expert_map_pattern_, task), /*with_weights=*/true));
  MOE_ASSIGN_OR_RETURN(ModelIdentity identity, IdentifyModel(*model_->weights().source));
  MOE_RETURN_IF_ERROR(ValidateExpertMap(map, identity, model_->config().top_k));
  const std::vector<int32_t> base = MergedExpertBaseIds({&map, 1}, model_->config())[0];
  InstallMergedExperts(map, base, model_->mutable_weights(), nullptr);
  slot_routing_ = ResolveSlotRouting(map, base, model_->config());
  return absl::OkStatus();
}

CompletionBackend::Traffic EngineBackend::TakeTraffic() {
  Traffic t{prompt_tokens_, completion_tokens_, 0, layers_executed_};
  completion_tokens_ = prompt_tokens_ = layers_executed_ = 0;
  return t;
}

void EngineBackend::SetLayerRouter(const LayerRouter* router, double skip_threshold) {
  layer_policy_ = router == nullptr ? nullptr
                                    : std::make_unique<LayerRoutingPolicy>(
                                          router, skip_threshold < 0 ? router->skip_threshold : skip_threshold);
}

}  // namespace moe
