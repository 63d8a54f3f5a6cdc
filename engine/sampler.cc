#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace moe {

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError("temperature must be a finite number >= 0");
  }
  if (top_k < 0) return absl::InvalidArgumentError("top_k must be >= 0");
  if (!(top_p > 0.0f && top_p <= 1.0f)) return absl::InvalidArgumentError("top_p must be in (0, 1]");
  return absl::OkStatus();
}

int32_t ArgMax(std::span<const float> values) {
  return static_cast<int32_t>(std::max_element(values.begin(), values.end()) - values.begin());
}

Sampler::Sampler(const SamplingParams& params) : params_(params), random_(params.seed ^ 0x5851F42D4C957F2Dull) {}

void Sampler::SkipSamples(int64_t samples) {
  if (params_.temperature > 0.0f) random_.Skip(static_cast<uint64_t>(samples));  // one draw per sample
}

int32_t Sampler::Sample(std::span<const float> logits) {
  if (params_.temperature == 0.0f) return ArgMax(logits);
  const int32_t n = static_cast<int32_t>(logits.size());
  order_.resize(static_cast<size_t>(n));
  std::iota(order_.begin(), order_.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  const int32_t keep = params_.top_k > 0 ? std::min(params_.top_k, n) : n;
  std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), by_logit);
  order_.resize(static_cast<size_t>(keep));
  // Softmax over the kept logits at the temperature, in double for a stable cumulative sum.
  probs_.resize(order_.size());
  const double max_logit = logits[order_[0]];
  double sum = 0.0;
  for (size_t i = 0; i < order_.size(); ++i) {
    probs_[i] = static_cast<float>(std::exp((logits[order_[i]] - max_logit) / params_.temperature));
    sum += probs_[i];
  }
  // Top-p: the smallest prefix whose mass reaches top_p.
  size_t cut = order_.size();
  if (params_.top_p < 1.0f) {
    double mass = 0.0;
    for (size_t i = 0; i < order_.size(); ++i) {
      mass += probs_[i] / sum;
      if (mass >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
  }
  double kept = 0.0;
  for (size_t i = 0; i < cut; ++i) kept += probs_[i];
  double u = random_.NextUniform() * kept;
  for (size_t i = 0; i < cut; ++i) {
    u -= probs_[i];
    if (u < 0) return order_[i];
  }
  return order_[cut - 1];
}

}  // namespace moe
