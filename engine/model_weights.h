// A model's weights in memory, repacked for the kernels. A process may hold only some experts.
#ifndef MOE_ENGINE_MODEL_WEIGHTS_H_
#define MOE_ENGINE_MODEL_WEIGHTS_H_

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/model_source.h"
#include "common/thread_pool.h"
#include "kernels/packed_matrix.h"

namespace moe {

// A SwiGLU feed-forward block: down(silu(gate(x)) * up(x)).
struct FfnWeights {
  PackedMatrix gate_up;  // [2 * ffn_size, hidden]: gate rows, then up rows
  PackedMatrix down;     // [hidden, ffn_size]
  int64_t ffn_size() const { return down.in_features(); }
  bool loaded() const { return !down.empty(); }
  size_t size_bytes() const { return gate_up.size_bytes() + down.size_bytes(); }
};

struct AttentionWeights {
  PackedMatrix qkv;            // [q + 2 * kv, hidden]: q rows, k rows, v rows
  std::vector<float> qkv_bias; // empty when the architecture has none
  PackedMatrix o;              // [hidden, q]
};

struct MoeWeights {
  PackedMatrix router;               // [num_experts, hidden]
  std::vector<FfnWeights> experts;   // by expert id; an expert this process does not own is not loaded()
  FfnWeights shared_expert;          // not loaded() when the model has none
  PackedMatrix shared_expert_gate;   // [1, hidden]
};

struct LayerWeights {
  std::vector<float> input_norm;
  std::vector<float> post_attention_norm;
  AttentionWeights attention;
  bool is_moe = false;
  MoeWeights moe;     // when is_moe
  FfnWeights dense;   // when !is_moe
};

struct LoadOptions {
  // Packed storage: kBF16 or kF32; nullopt keeps the checkpoint's type (F16 widens to F32).
  std::optional<DType> storage;
  // Which routed experts to load; null loads all. Called as owns_expert(layer, expert).
  std::function<bool(int64_t, int64_t)> owns_expert;
};

struct ModelWeights {
  std::shared_ptr<const ModelSource> source;  // keeps the embedding table mapped
  TensorView embedding;                       // [vocab, hidden], any dtype, read row by row
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;
  PackedMatrix lm_head;                       // [vocab, hidden]

  const ModelConfig& config() const { return source->config(); }
  // Total bytes of packed weights held (memory accounting in benchmarks and tests).
  size_t packed_bytes() const;
};

// Reads and repacks the weights `options` asks for. Errors name the file and tensor (see ModelSource).
absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModelWeights(std::shared_ptr<const ModelSource> source,
                                                               const LoadOptions& options, ThreadPool* pool);

}  // namespace moe

#endif  // MOE_ENGINE_MODEL_WEIGHTS_H_
