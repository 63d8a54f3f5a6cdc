// The MoE block's seam: gate -> routing decision -> dispatch -> expert compute -> combine.
// The layer code computes the routing and hands it to an ExpertDispatcher; the local dispatcher runs
// every expert in this process, a distributed one moves tokens to the experts' owners and back.
#ifndef MOE_ENGINE_EXPERT_DISPATCH_H_
#define MOE_ENGINE_EXPERT_DISPATCH_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/model_config.h"
#include "common/thread_pool.h"
#include "engine/model_weights.h"

namespace moe {

// Top-k experts and their combine weights for each token of one MoE layer. Expert ids index the layer's
// expert table (MoeWeights::experts): the checkpoint's experts first, then merged experts of task maps.
struct RoutingDecision {
  int64_t num_tokens = 0;
  int64_t top_k = 0;
  std::vector<int32_t> experts;  // [num_tokens * top_k], best first; kNoExpert where a slot is unused
  std::vector<float> weights;    // [num_tokens * top_k]; 0 where unused
};

inline constexpr int32_t kNoExpert = -1;

// Where each gate slot of each MoE layer sends its tokens for one task (a resolved task expert map):
// targets[layer][slot] is an expert table id, or kNoExpert when the slot is dropped from the gate (it
// never wins). An empty layer (dense layers, or a map that leaves a layer alone) routes slot e to expert e.
struct SlotRouting {
  std::vector<std::vector<int32_t>> targets;
  const int32_t* LayerTargets(int64_t layer) const {
    return layer < static_cast<int64_t>(targets.size()) && !targets[layer].empty() ? targets[layer].data() : nullptr;
  }
};

// Softmax over each row of router_logits [num_tokens, num_experts], top-k (ties: lower expert id), and
// renormalization of the k weights when config.norm_topk_prob. Pure.
// With row_targets (one entry per token; null = identity), a token's dropped slots are left out of the
// softmax and the top-k, each chosen slot is sent to its target, and slots sharing a target are merged
// into one entry (weights summed, best first); the freed entries are kNoExpert with weight 0.
// REQUIRES: each row keeps at least top_k slots.
RoutingDecision ComputeRouting(const float* router_logits, int64_t num_tokens, const ModelConfig& config,
                               std::span<const int32_t* const> row_targets = {});

// out[rows, hidden] = down(silu(gate(x)) * up(x)). scratch is resized as needed.
void RunFfn(const FfnWeights& w, const float* x, int64_t rows, float* out, std::vector<float>* scratch,
            ThreadPool* pool);

// One run of a MoE layer within a step. Pass 0 is the layer's first run (every participant enters it,
// with zero tokens if all its sequences skip the layer); pass 1 runs it again for the sequences whose
// layer path repeats it, and happens only when some participant asked for it in pass 0.
struct MoeCall {
  int64_t layer = 0;
  int pass = 0;
  bool wants_repeat = false;  // pass 0: this process has sequences that repeat `layer`
  // The step-wide row of each token (for per-token accounting) when only some sequences run this
  // pass; empty: token t is row t.
  std::span<const int64_t> step_rows;
};

class ExpertDispatcher {
 public:
  virtual ~ExpertDispatcher() = default;
  // out[t] = sum_j routing.weights[t, j] * Expert_{routing.experts[t, j]}(x[t]) for every token t of
  // call.layer; x and out are [num_tokens, hidden]; out is overwritten. Called from the engine thread.
  // Returns whether any participant wants a pass 1 of this layer (always false for pass 1), so that
  // every participant enters the same collectives.
  virtual absl::StatusOr<bool> DispatchCombine(const MoeCall& call, const RoutingDecision& routing, const float* x,
                                               float* out) = 0;
};

// Runs every expert in this process. REQUIRES: weights holds every expert.
class LocalExpertDispatcher : public ExpertDispatcher {
 public:
  LocalExpertDispatcher(const ModelWeights* weights, ThreadPool* pool) : weights_(weights), pool_(pool) {}
  absl::StatusOr<bool> DispatchCombine(const MoeCall& call, const RoutingDecision& routing, const float* x,
                                       float* out) override;

 private:
  const ModelWeights* weights_;
  ThreadPool* pool_;
  std::vector<float> gathered_, expert_out_, scratch_;
};

}  // namespace moe

#endif  // MOE_ENGINE_EXPERT_DISPATCH_H_
