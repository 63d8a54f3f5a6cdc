// The MoE block's seam: gate -> routing decision -> dispatch -> expert compute -> combine.
// The layer code computes the routing and hands it to an ExpertDispatcher; the local dispatcher runs
// every expert in this process, a distributed one moves tokens to the experts' owners and back.
#ifndef MOE_ENGINE_EXPERT_DISPATCH_H_
#define MOE_ENGINE_EXPERT_DISPATCH_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "checkpoint/model_config.h"
#include "common/thread_pool.h"
#include "engine/model_weights.h"

namespace moe {

// Top-k experts and their combine weights for each token of one MoE layer.
struct RoutingDecision {
  int64_t num_tokens = 0;
  int64_t top_k = 0;
  std::vector<int32_t> experts;  // [num_tokens * top_k], best first
  std::vector<float> weights;    // [num_tokens * top_k]
};

// Softmax over each row of router_logits [num_tokens, num_experts], top-k (ties: lower expert id), and
// renormalization of the k weights when config.norm_topk_prob. Pure.
RoutingDecision ComputeRouting(const float* router_logits, int64_t num_tokens, const ModelConfig& config);

// out[rows, hidden] = down(silu(gate(x)) * up(x)). scratch is resized as needed.
void RunFfn(const FfnWeights& w, const float* x, int64_t rows, float* out, std::vector<float>* scratch,
            ThreadPool* pool);

class ExpertDispatcher {
 public:
  virtual ~ExpertDispatcher() = default;
  // out[t] = sum_j routing.weights[t, j] * Expert_{routing.experts[t, j]}(x[t]) for every token t of
  // `layer`; x and out are [num_tokens, hidden]; out is overwritten. Called from the engine thread.
  virtual absl::Status DispatchCombine(int64_t layer, const RoutingDecision& routing, const float* x, float* out) = 0;
};

// Runs every expert in this process. REQUIRES: weights holds every expert.
class LocalExpertDispatcher : public ExpertDispatcher {
 public:
  LocalExpertDispatcher(const ModelWeights* weights, ThreadPool* pool) : weights_(weights), pool_(pool) {}
  absl::Status DispatchCombine(int64_t layer, const RoutingDecision& routing, const float* x, float* out) override;

 private:
  const ModelWeights* weights_;
  ThreadPool* pool_;
  std::vector<float> gathered_, expert_out_, scratch_;
};

}  // namespace moe

#endif  // MOE_ENGINE_EXPERT_DISPATCH_H_
