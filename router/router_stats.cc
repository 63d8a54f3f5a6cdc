#include "router/router_stats.h"

#include <algorithm>

#include "common/status.h"
#include "engine/expert_dispatch.h"

namespace moe {

absl::StatusOr<std::vector<LayerRouterStats>> CollectRouterStats(Model& model,
                                                                 const std::vector<std::vector<int32_t>>& sequences,
                                                                 int64_t batch_size) {
  const ModelConfig& c = model.config();
  std::vector<LayerRouterStats> stats(static_cast<size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    if (!c.IsMoeLayer(l)) continue;
    stats[l].num_experts = c.num_experts;
    stats[l].usage.assign(static_cast<size_t>(c.num_experts), 0);
  }
  model.SetRouterLogitsObserver([&](int64_t layer, const float* logits, int64_t rows) {
    LayerRouterStats& s = stats[layer];
    s.logits.insert(s.logits.end(), logits, logits + rows * c.num_experts);
    const RoutingDecision routing = ComputeRouting(logits, rows, c);
    for (int32_t e : routing.experts) ++s.usage[e];
  });
  absl::Status status;
  for (size_t first = 0; first < sequences.size() && status.ok(); first += static_cast<size_t>(batch_size)) {
    const size_t end = std::min(sequences.size(), first + static_cast<size_t>(batch_size));
    std::vector<std::unique_ptr<KvCache>> caches;
    std::vector<ForwardInput> inputs;
    for (size_t i = first; i < end; ++i) {
      caches.push_back(model.NewCache());
      inputs.push_back({caches.back().get(), sequences[i], false, nullptr});
    }
    status = model.Forward(inputs).status();
  }
  model.SetRouterLogitsObserver(nullptr);
  MOE_RETURN_IF_ERROR(status);
  return stats;
}

}  // namespace moe
