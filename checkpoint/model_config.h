// A Hugging Face MoE model's config.json, validated, plus the tensor names of its architecture.
#ifndef MOE_CHECKPOINT_MODEL_CONFIG_H_
#define MOE_CHECKPOINT_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe {

// How one model_type names and wires its tensors. Adding a family (e.g. olmoe) is one more entry in
// model_config.cc plus whatever flag its forward pass needs here.
struct ArchitectureSpec {
  absl::string_view model_type;
  bool attention_bias = false;       // q_proj/k_proj/v_proj carry biases (qwen2_moe)
  bool qk_norm = false;              // RMSNorm on the full q and k projections (olmoe)
  absl::string_view moe_block;        // "block_sparse_moe" or "mlp"
  absl::string_view expert_gate, expert_up, expert_down;  // "w1","w3","w2" or "gate_proj","up_proj","down_proj"
  bool default_norm_topk_prob = true;
};

// Which tensors feed one expert FFN (or a dense MLP / shared expert).
enum class FfnProjection { kGate, kUp, kDown };

struct ModelConfig {
  std::string model_type;
  const ArchitectureSpec* arch = nullptr;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t sliding_window = 0;  // 0: none
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t expert_ffn_size = 0;         // intermediate size of one routed expert
  int64_t dense_ffn_size = 0;          // intermediate size of a dense (non-MoE) layer's MLP
  int64_t shared_expert_ffn_size = 0;  // 0: no shared expert
  bool norm_topk_prob = true;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;

  // Parses and validates config.json text. Errors are INVALID_ARGUMENT naming the field (and
  // `source`, e.g. the file path); an unknown model_type is reported with the supported ones.
  static absl::StatusOr<ModelConfig> FromJson(absl::string_view json_text, absl::string_view source);
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);

  bool IsMoeLayer(int64_t layer) const;

  // Tensor names, e.g. LayerTensor(3, "self_attn.q_proj.weight").
  std::string LayerTensor(int64_t layer, absl::string_view suffix) const;
  std::string ExpertTensor(int64_t layer, int64_t expert, FfnProjection p) const;
  std::string RouterGateTensor(int64_t layer) const;
  std::string SharedExpertTensor(int64_t layer, FfnProjection p) const;
  std::string SharedExpertGateTensor(int64_t layer) const;
  std::string DenseMlpTensor(int64_t layer, FfnProjection p) const;

  // Every tensor a complete checkpoint of this config holds, with its shape, in a stable order
  // (embedding, then layer by layer, then final norm and LM head).
  std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensors() const;
};

// The model types this build understands.
std::vector<absl::string_view> SupportedModelTypes();

}  // namespace moe

#endif  // MOE_CHECKPOINT_MODEL_CONFIG_H_
