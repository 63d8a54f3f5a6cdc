#include "engine/generator.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moe {

absl::StatusOr<std::vector<GenerationResult>> Generate(Model& model, const std::vector<GenerationRequest>& requests,
                                                       GenerationStats* stats) {
  const ModelConfig& c = model.config();
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationRequest& r = requests[i];
    if (r.prompt.empty()) return absl::InvalidArgumentError(absl::StrCat("request ", i, ": empty prompt"));
    if (r.max_tokens < 1) return absl::InvalidArgumentError(absl::StrCat("request ", i, ": max_tokens must be >= 1"));
    if (static_cast<int64_t>(r.prompt.size()) + r.max_tokens > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("request ", i, ": prompt (", r.prompt.size(), ") + max_tokens (",
                                                     r.max_tokens, ") exceeds the context of ", c.max_position_embeddings));
    }
    MOE_RETURN_IF_ERROR(r.sampling.Validate());
  }
  using Clock = std::chrono::steady_clock;
  GenerationStats local;
  std::vector<std::unique_ptr<KvCache>> caches;
  std::vector<Sampler> samplers;
  std::vector<GenerationResult> results(requests.size());
  std::vector<ForwardInput> inputs;
  for (const GenerationRequest& r : requests) {
    caches.push_back(model.NewCache());
    MOE_RETURN_IF_ERROR(caches.back()->SetLayerPath(r.layer_path));
    samplers.emplace_back(r.sampling);
    inputs.push_back({caches.back().get(), r.prompt, false, r.slot_routing, r.layer_policy});
    local.prompt_tokens += static_cast<int64_t>(r.prompt.size());
  }
  std::vector<size_t> live(requests.size());
  for (size_t i = 0; i < live.size(); ++i) live[i] = i;
  auto t0 = Clock::now();
  bool prefill = true;
  std::vector<int32_t> last(requests.size());
  while (!live.empty()) {
    MOE_ASSIGN_OR_RETURN(std::vector<float> logits, model.Forward(inputs));
    auto t1 = Clock::now();
    (prefill ? local.prefill_seconds : local.decode_seconds) += std::chrono::duration<double>(t1 - t0).count();
    if (!prefill) ++local.decode_steps;
    t0 = t1;
    prefill = false;
    std::vector<size_t> still_live;
    for (size_t j = 0; j < live.size(); ++j) {
      const size_t i = live[j];
      const int32_t token = samplers[i].Sample(std::span<const float>(logits).subspan(j * c.vocab_size, c.vocab_size));
      results[i].tokens.push_back(token);
      ++local.generated_tokens;
      const bool eos = requests[i].stop_at_eos &&
                       std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), token) != c.eos_token_ids.end();
      if (eos) {
        results[i].finish = FinishReason::kEos;
      } else if (static_cast<int64_t>(results[i].tokens.size()) < requests[i].max_tokens) {
        still_live.push_back(i);
        last[i] = token;
      }
    }
    live = std::move(still_live);
    inputs.clear();
    for (size_t i : live) inputs.push_back({caches[i].get(), std::span<const int32_t>(&last[i], 1), false, requests[i].slot_routing});
  }
  for (size_t i = 0; i < requests.size(); ++i) results[i].layer_path = caches[i]->layer_path();
  if (stats != nullptr) *stats = local;
  return results;
}

}  // namespace moe
