// Collects a task's router statistics (per MoE layer: router logits of every token, top-k usage) by
// running its examples through the engine, teacher-forced (prompt and answer in one prefill).
#ifndef MOE_ROUTER_ROUTER_STATS_H_
#define MOE_ROUTER_ROUTER_STATS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model.h"
#include "router/pruning.h"

namespace moe {

// stats[layer] for every layer (dense layers stay empty). Sequences run in batches of `batch_size`.
// INVALID_ARGUMENT for an empty or over-long sequence (from the engine).
absl::StatusOr<std::vector<LayerRouterStats>> CollectRouterStats(Model& model,
                                                                 const std::vector<std::vector<int32_t>>& sequences,
                                                                 int64_t batch_size);

}  // namespace moe

#endif  // MOE_ROUTER_ROUTER_STATS_H_
