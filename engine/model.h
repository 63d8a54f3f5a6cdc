// One process's forward pass of a Mixtral / Qwen2-MoE model over a ragged batch of sequences.
#ifndef MOE_ENGINE_MODEL_H_
#define MOE_ENGINE_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "engine/expert_dispatch.h"
#include "engine/layer_path.h"
#include "engine/model_weights.h"

namespace moe {

// The keys and values of one sequence, every layer, and the sequence's layer path. Owned by whoever
// owns the sequence. A repeated layer keeps the keys of its second run apart (pass 1); a skipped layer
// holds none.
class KvCache {
 public:
  explicit KvCache(const ModelConfig& config);
  int64_t length() const { return length_; }
  // Rows [pos][num_kv_heads * head_dim] of `layer`'s run `pass` (0, or 1 for a repeat).
  const float* keys(int64_t layer, int pass = 0) const { return keys_[Slot(layer, pass)].data(); }
  const float* values(int64_t layer, int pass = 0) const { return values_[Slot(layer, pass)].data(); }

  // Empty (every layer once) until set here or decided by a LayerPathPolicy at the first forward step.
  const LayerPath& layer_path() const { return layer_path_; }
  // How many times the sequence runs `layer` (every layer once until a path is set).
  int runs(int64_t layer) const { return layer_path_.empty() ? kRunLayer : layer_path_[layer]; }
  // Fixes the path before the first forward step: INVALID_ARGUMENT for a malformed path,
  // FAILED_PRECONDITION once tokens are cached.
  absl::Status SetLayerPath(LayerPath path);
  int64_t layers_per_token() const { return LayersExecuted(layer_path_, num_layers_); }

 private:
  friend class Model;
  static size_t Slot(int64_t layer, int pass) { return static_cast<size_t>(layer * kMaxLayerPasses + pass); }
  int64_t kv_dim_;
  int64_t num_layers_;
  int64_t length_ = 0;
  LayerPath layer_path_;
  std::vector<std::vector<float>> keys_, values_;  // [layer * kMaxLayerPasses + pass]
};

// New tokens of one sequence for one forward step: a prompt (or a chunk of it) or one decode token.
struct ForwardInput {
  KvCache* cache = nullptr;            // tokens[0] sits at position cache->length()
  std::span<const int32_t> tokens;
  bool all_logits = false;             // logits of every new token, not only the last (tests)
  const SlotRouting* slot_routing = nullptr;  // the sequence's task expert map; null = the full model
  // Decides the sequence's layer path at its first forward step (unless the cache already has one);
  // null = every layer once. Must outlive the call.
  const LayerPathPolicy* layer_policy = nullptr;
};

// Sees every MoE layer's router logits [rows, num_experts] of a Forward call, rows in batch order, for
// each pass that runs the layer (rows of the sequences running it; offline tools: expert-map pruning).
using RouterLogitsObserver = std::function<void(int64_t layer, const float* logits, int64_t rows)>;

class Model {
 public:
  // `pool` and `dispatcher` must outlive the model; a null dispatcher runs all experts locally.
  Model(std::unique_ptr<ModelWeights> weights, ThreadPool* pool, ExpertDispatcher* dispatcher = nullptr);

  const ModelConfig& config() const { return weights_->config(); }
  const ModelWeights& weights() const { return *weights_; }
  std::unique_ptr<KvCache> NewCache() const { return std::make_unique<KvCache>(config()); }

  // Runs the batch and appends every input's keys and values to its cache. Returns logits
  // [rows, vocab_size], rows in input order (1 per input, or tokens.size() with all_logits).
  // INVALID_ARGUMENT (nothing appended) for empty inputs, token ids outside the vocabulary, or a
  // sequence that would pass max_position_embeddings; on any error no cache grows and no layer path is
  // kept. Not thread-safe: one caller at a time. An empty batch still runs every layer (and its
  // collectives) with zero rows. Each input runs the layers of its cache's layer path.
  absl::StatusOr<std::vector<float>> Forward(std::span<const ForwardInput> batch);

  // Tokens routed to each expert of each layer since construction or ResetExpertUsage(): [layer][expert
  // table id]; at least num_experts columns, more once task maps' merged experts were used.
  const std::vector<std::vector<int64_t>>& expert_usage() const { return expert_usage_; }
  void ResetExpertUsage();

  void SetRouterLogitsObserver(RouterLogitsObserver observer) { router_observer_ = std::move(observer); }

  // The expert tables, for installing task maps' merged experts (router library). Not while Forward runs.
  ModelWeights* mutable_weights() { return weights_.get(); }

 private:
  void RmsNorm(const float* x, const std::vector<float>& weight, int64_t rows, float* out) const;
  void ApplyRope(float* vec, int64_t num_heads, int64_t position) const;
  // Causal attention of every new token over its sequence's cached keys of KV slot `slot`; past[b] is
  // input b's cache length before this step.
  void Attention(size_t slot, std::span<const ForwardInput> batch, const std::vector<int64_t>& row_start,
                 const std::vector<int64_t>& past, const float* qkv, float* out);
  // One run (pass) of `layer` over hidden [row_start.back(), hidden_size], in place. Returns whether
  // any participant of the step wants a pass 1 of this layer (see MoeCall).
  // step_rows: the step-wide row of each of hidden's rows (empty: the same).
  absl::StatusOr<bool> RunLayer(int64_t layer, int pass, bool wants_repeat, std::span<const ForwardInput> batch,
                                const std::vector<int64_t>& row_start, const std::vector<int64_t>& past,
                                float* hidden, std::span<const int64_t> step_rows);

  std::unique_ptr<ModelWeights> weights_;
  ThreadPool* pool_;
  std::unique_ptr<LocalExpertDispatcher> local_dispatcher_;
  ExpertDispatcher* dispatcher_;
  std::vector<float> inv_freq_;
  std::vector<std::vector<int64_t>> expert_usage_;
  RouterLogitsObserver router_observer_;
  std::vector<const int32_t*> row_targets_;
  // Step scratch, reused across calls.
  std::vector<float> hidden_, normed_, qkv_, attn_, ffn_out_, router_logits_, shared_out_, shared_gate_, scratch_;
  std::vector<float> pass_hidden_;   // rows of the sequences running a pass, when not all do
  std::vector<int64_t> pass_rows_;   // their step-wide rows
};

}  // namespace moe

#endif  // MOE_ENGINE_MODEL_H_
