#include "engine/expert_dispatch.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/kernels.h"

namespace moe {

RoutingDecision ComputeRouting(const float* router_logits, int64_t num_tokens, const ModelConfig& config,
                               std::span<const int32_t* const> row_targets) {
  RoutingDecision r;
  r.num_tokens = num_tokens;
  r.top_k = config.top_k;
  const int64_t e_count = config.num_experts, k = config.top_k;
  r.experts.resize(static_cast<size_t>(num_tokens * k));
  r.weights.resize(static_cast<size_t>(num_tokens * k));
  std::vector<float> prob(static_cast<size_t>(e_count));
  std::vector<int32_t> order;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* logits = router_logits + t * e_count;
    const int32_t* targets = row_targets.empty() ? nullptr : row_targets[t];
    order.clear();
    for (int64_t e = 0; e < e_count; ++e) {
      if (targets == nullptr || targets[e] != kNoExpert) order.push_back(static_cast<int32_t>(e));
    }
    float max_logit = -std::numeric_limits<float>::infinity();
    for (int32_t e : order) max_logit = std::max(max_logit, logits[e]);
    float sum = 0.0f;
    for (int32_t e : order) sum += prob[e] = std::exp(logits[e] - max_logit);
    for (int32_t e : order) prob[e] /= sum;
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int32_t a, int32_t b) { return prob[a] > prob[b] || (prob[a] == prob[b] && a < b); });
    float top_sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) top_sum += prob[order[j]];
    int32_t* experts = r.experts.data() + t * k;
    float* weights = r.weights.data() + t * k;
    int64_t used = 0;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t target = targets == nullptr ? order[j] : targets[order[j]];
      const float w = config.norm_topk_prob ? prob[order[j]] / top_sum : prob[order[j]];
      int64_t same = 0;
      while (same < used && experts[same] != target) ++same;
      if (same < used) {
        weights[same] += w;
      } else {
        experts[used] = target;
        weights[used++] = w;
      }
    }
    for (int64_t j = used; j < k; ++j) {
      experts[j] = kNoExpert;
      weights[j] = 0.0f;
    }
  }
  return r;
}

void RunFfn(const FfnWeights& w, const float* x, int64_t rows, float* out, std::vector<float>* scratch,
            ThreadPool* pool) {
  const int64_t f = w.ffn_size();
  scratch->resize(static_cast<size_t>(rows * 3 * f));
  float* gate_up = scratch->data();
  float* act = gate_up + rows * 2 * f;
  MatMul(x, rows, w.gate_up, gate_up, pool);
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate_up + r * 2 * f;
    const float* u = g + f;
    float* a = act + r * f;
    for (int64_t j = 0; j < f; ++j) a[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
  }
  MatMul(act, rows, w.down, out, pool);
}

absl::StatusOr<bool> LocalExpertDispatcher::DispatchCombine(const MoeCall& call, const RoutingDecision& routing,
                                                            const float* x, float* out) {
  const int64_t layer = call.layer;
  const ModelConfig& c = weights_->config();
  const MoeWeights& moe = weights_->layers[layer].moe;
  const int64_t h = c.hidden_size, slots = routing.num_tokens * routing.top_k;
  std::memset(out, 0, sizeof(float) * static_cast<size_t>(routing.num_tokens * h));
  // Counting sort of the (token, slot) pairs by expert: slot_order lists pairs expert by expert.
  const int64_t table = static_cast<int64_t>(moe.experts.size());
  std::vector<int64_t> start(static_cast<size_t>(table + 1), 0);
  for (int64_t s = 0; s < slots; ++s) {
    const int32_t e = routing.experts[s];
    if (e == kNoExpert) continue;
    if (e < 0 || e >= table) return absl::InvalidArgumentError(absl::StrCat("layer ", layer, ": no expert ", e));
    ++start[e + 1];
  }
  for (int64_t e = 0; e < table; ++e) start[e + 1] += start[e];
  std::vector<int64_t> fill(start.begin(), start.end() - 1), slot_order(static_cast<size_t>(start.back()));
  for (int64_t s = 0; s < slots; ++s) {
    if (routing.experts[s] != kNoExpert) slot_order[fill[routing.experts[s]]++] = s;
  }

  for (int64_t e = 0; e < table; ++e) {
    const int64_t n = start[e + 1] - start[e];
    if (n == 0) continue;
    if (!moe.experts[e].loaded()) {
      return absl::FailedPreconditionError(absl::StrCat("layer ", layer, ": expert ", e, " is not loaded here"));
    }
    gathered_.resize(static_cast<size_t>(n * h));
    expert_out_.resize(static_cast<size_t>(n * h));
    for (int64_t i = 0; i < n; ++i) {
      const int64_t token = slot_order[start[e] + i] / routing.top_k;
      std::memcpy(gathered_.data() + i * h, x + token * h, sizeof(float) * static_cast<size_t>(h));
    }
    RunFfn(moe.experts[e], gathered_.data(), n, expert_out_.data(), &scratch_, pool_);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t s = slot_order[start[e] + i];
      AddProduct(routing.weights[s], expert_out_.data() + i * h, out + (s / routing.top_k) * h, h);
    }
  }
  return call.pass == 0 && call.wants_repeat;
}

}  // namespace moe
