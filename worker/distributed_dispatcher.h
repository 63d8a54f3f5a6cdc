// ExpertDispatcher that runs expert parallelism over an Exchange: for each MoE layer, every worker
// sends each token (once per destination, with the experts and weights it needs there) to the owners
// of its top-k experts, computes the experts it owns for everyone's tokens, and sends the weighted sums
// back. Every worker enters both collectives of every MoE layer, with zero tokens if it has none; the
// dispatch message says whether its sender wants a repeat pass of the layer, so that all agree on one.
#ifndef MOE_WORKER_DISTRIBUTED_DISPATCHER_H_
#define MOE_WORKER_DISTRIBUTED_DISPATCHER_H_

#include <cstdint>
#include <vector>

#include "common/shard_map.h"
#include "engine/expert_dispatch.h"
#include "engine/layer_path.h"
#include "exchange/exchange.h"

namespace moe {

// Bytes one step moved, for usage reporting and metrics (sends to other workers only).
struct StepTraffic {
  std::vector<int64_t> per_layer;  // [layer]
  std::vector<int64_t> per_peer;   // [destination worker]
  std::vector<int64_t> per_token;  // [token row of the step's batch], dispatch + the combine it causes
  std::vector<int64_t> expert_tokens;  // [layer * num_experts + expert] computed here
  int64_t exchange_ns = 0;  // time in the step's all-to-alls (sending, waiting for the peers, receiving)
};

class DistributedExpertDispatcher : public ExpertDispatcher {
 public:
  // `weights` holds this worker's experts; all pointers must outlive the dispatcher.
  DistributedExpertDispatcher(const ModelWeights* weights, const ShardMap* shard_map, Exchange* exchange,
                              ThreadPool* pool);

  // Starts a step: tags of its collectives derive from step_id, identical on every worker.
  void BeginStep(uint64_t step_id, int64_t num_tokens);
  const StepTraffic& traffic() const { return traffic_; }

  absl::StatusOr<bool> DispatchCombine(const MoeCall& call, const RoutingDecision& routing, const float* x,
                                       float* out) override;

 private:
  // exchange_->AllToAllV, its time added to traffic_.exchange_ns.
  absl::Status TimedAllToAllV(uint64_t tag, const ExchangeBuffer& send, ExchangeBuffer* recv);

  const ModelWeights* weights_;
  const ShardMap* shard_map_;
  Exchange* exchange_;
  ThreadPool* pool_;
  uint64_t step_id_ = 0;
  StepTraffic traffic_;
  std::vector<float> gathered_, expert_out_, scratch_;
  // Per-layer buffers, kept across layers and steps (the hot path allocates nothing once warm).
  ExchangeBuffer dispatch_send_, dispatch_recv_, combine_send_, combine_recv_;
  std::vector<std::vector<int64_t>> sent_tokens_;  // [destination] token indices, in record order
  std::vector<int> slot_owner_;                     // [token * top_k + slot] worker running it, -1: dropped
  std::vector<size_t> block_sizes_;
};

}  // namespace moe

#endif  // MOE_WORKER_DISTRIBUTED_DISPATCHER_H_
