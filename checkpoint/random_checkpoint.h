// Random-weight checkpoints of any shape in the Hugging Face layout (tests and benchmarks).
#ifndef MOE_CHECKPOINT_RANDOM_CHECKPOINT_H_
#define MOE_CHECKPOINT_RANDOM_CHECKPOINT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"

namespace moe {

struct RandomCheckpointOptions {
  std::string model_type = "mixtral";  // or "qwen2_moe"
  int64_t vocab_size = 512;
  int64_t hidden_size = 64;
  int64_t num_layers = 2;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 2;
  int64_t num_experts = 8;
  int64_t top_k = 2;
  int64_t expert_ffn_size = 96;
  int64_t dense_ffn_size = 128;         // qwen2_moe dense layers
  int64_t shared_expert_ffn_size = 0;   // qwen2_moe shared expert (0: none)
  bool norm_topk_prob = false;          // qwen2_moe
  int64_t decoder_sparse_step = 1;      // qwen2_moe
  std::vector<int64_t> mlp_only_layers; // qwen2_moe
  bool tie_word_embeddings = false;
  int64_t max_position_embeddings = 2048;
  double rope_theta = 10000.0;
  DType dtype = DType::kF32;
  int shards = 1;                        // > 1 writes model-0000i-of-0000n.safetensors + index
  bool tokenizer = true;                 // train and write tokenizer.model
  uint64_t seed = 1;
};

// Creates `dir` (if needed) and writes config.json, the weights and (optionally) tokenizer.model.
// Weights are uniform with std 1/sqrt(fan_in); norm weights are near 1. Same options, same bytes.
absl::Status WriteRandomCheckpoint(const std::string& dir, const RandomCheckpointOptions& options);

}  // namespace moe

#endif  // MOE_CHECKPOINT_RANDOM_CHECKPOINT_H_
