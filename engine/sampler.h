// Next-token sampling: greedy, temperature, top-k, top-p, with a per-request seed.
#ifndef MOE_ENGINE_SAMPLER_H_
#define MOE_ENGINE_SAMPLER_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "common/splitmix.h"

namespace moe {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int32_t top_k = 0;         // 0: no limit
  float top_p = 1.0f;        // (0, 1]
  uint64_t seed = 0;

  // INVALID_ARGUMENT naming the field for negative/NaN temperature, negative top_k, top_p outside (0, 1].
  absl::Status Validate() const;
};

// One request's sampler; the same params and logits give the same tokens.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  int32_t Sample(std::span<const float> logits);
  // Puts the random stream where it would be after `samples` calls of Sample (resuming a sequence).
  void SkipSamples(int64_t samples);

 private:
  SamplingParams params_;
  SplitMix64 random_;
  std::vector<int32_t> order_;
  std::vector<float> probs_;
};

// Index of the largest value (lowest index among ties).
int32_t ArgMax(std::span<const float> values);

}  // namespace moe

#endif  // MOE_ENGINE_SAMPLER_H_
