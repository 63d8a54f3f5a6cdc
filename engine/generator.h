// Single-process generation: batched prefill of every prompt, then batched decode of all live sequences.
#ifndef MOE_ENGINE_GENERATOR_H_
#define MOE_ENGINE_GENERATOR_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model.h"
#include "engine/sampler.h"

namespace moe {

struct GenerationRequest {
  std::vector<int32_t> prompt;  // token ids, BOS included if wanted
  int64_t max_tokens = 16;
  SamplingParams sampling;
  bool stop_at_eos = true;
  const SlotRouting* slot_routing = nullptr;  // task expert map; null = full model; must outlive Generate
  LayerPath layer_path;                        // fixed layer path; empty = decided by layer_policy or none
  const LayerPathPolicy* layer_policy = nullptr;  // decides the path at prefill; must outlive Generate
};

enum class FinishReason { kLength, kEos };

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated tokens only (EOS included when it ended the sequence)
  FinishReason finish = FinishReason::kLength;
  LayerPath layer_path;  // the path it ran (empty: every layer once)
};

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  int64_t decode_steps = 0;
};

// Runs every request to completion; results are in request order. INVALID_ARGUMENT for an empty
// prompt, bad sampling values, max_tokens < 1, a prompt + max_tokens past the context, or a bad layer path.
absl::StatusOr<std::vector<GenerationResult>> Generate(Model& model, const std::vector<GenerationRequest>& requests,
                                                       GenerationStats* stats = nullptr);

}  // namespace moe

#endif  // MOE_ENGINE_GENERATOR_H_
