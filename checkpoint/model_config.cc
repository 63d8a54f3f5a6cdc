#include "checkpoint/model_config.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

constexpr ArchitectureSpec kArchitectures[] = {
    {.model_type = "mixtral", .attention_bias = false, .qk_norm = false, .moe_block = "block_sparse_moe",
     .expert_gate = "w1", .expert_up = "w3", .expert_down = "w2", .default_norm_topk_prob = true},
    {.model_type = "qwen2_moe", .attention_bias = true, .qk_norm = false, .moe_block = "mlp",
     .expert_gate = "gate_proj", .expert_up = "up_proj", .expert_down = "down_proj",
     .default_norm_topk_prob = false},
};

using Json = nlohmann::json;

class FieldReader {
 public:
  FieldReader(const Json& j, absl::string_view source) : j_(j), source_(source) {}

  absl::Status Error(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": field '", field, "' ", what));
  }
  bool Has(const char* field) const { return j_.contains(field) && !j_[field].is_null(); }

  absl::StatusOr<int64_t> Int(const char* field, int64_t min_value, std::optional<int64_t> fallback = {}) const {
    if (!Has(field)) {
      if (fallback) return *fallback;
      return Error(field, "is missing");
    }
    const Json& v = j_[field];
    if (!v.is_number_integer()) return Error(field, "must be an integer");
    const int64_t x = v.get<int64_t>();
    if (x < min_value) return Error(field, absl::StrCat("must be >= ", min_value, ", got ", x));
    return x;
  }
  absl::StatusOr<double> Real(const char* field, double fallback, bool positive) const {
    if (!Has(field)) return fallback;
    const Json& v = j_[field];
    if (!v.is_number()) return Error(field, "must be a number");
    const double x = v.get<double>();
    if (positive && !(x > 0)) return Error(field, "must be > 0");
    return x;
  }
  absl::StatusOr<bool> Bool(const char* field, bool fallback) const {
    if (!Has(field)) return fallback;
    if (!j_[field].is_boolean()) return Error(field, "must be true or false");
    return j_[field].get<bool>();
  }
  absl::StatusOr<std::vector<int64_t>> IntList(const char* field) const {
    std::vector<int64_t> out;
    if (!Has(field)) return out;
    const Json& v = j_[field];
    if (v.is_number_integer()) return std::vector<int64_t>{v.get<int64_t>()};
    if (!v.is_array()) return Error(field, "must be an integer or a list of integers");
    for (const Json& e : v) {
      if (!e.is_number_integer()) return Error(field, "must hold only integers");
      out.push_back(e.get<int64_t>());
    }
    return out;
  }

 private:
  const Json& j_;
  absl::string_view source_;
};

absl::string_view ProjectionName(const ArchitectureSpec& a, FfnProjection p) {
  switch (p) {
    case FfnProjection::kGate: return a.expert_gate;
    case FfnProjection::kUp: return a.expert_up;
    case FfnProjection::kDown: return a.expert_down;
  }
  return "";
}

absl::string_view HfProjectionName(FfnProjection p) {
  switch (p) {
    case FfnProjection::kGate: return "gate_proj";
    case FfnProjection::kUp: return "up_proj";
    case FfnProjection::kDown: return "down_proj";
  }
  return "";
}

}  // namespace

std::vector<absl::string_view> SupportedModelTypes() {
  std::vector<absl::string_view> out;
  for (const ArchitectureSpec& a : kArchitectures) out.push_back(a.model_type);
  return out;
}

absl::StatusOr<ModelConfig> ModelConfig::FromJson(absl::string_view json_text, absl::string_view source) {
  Json j = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  FieldReader f(j, source);
  ModelConfig c;
  if (!j.contains("model_type") || !j["model_type"].is_string()) return f.Error("model_type", "is missing");
  c.model_type = j["model_type"].get<std::string>();
  for (const ArchitectureSpec& a : kArchitectures) {
    if (a.model_type == c.model_type) c.arch = &a;
  }
  if (c.arch == nullptr) {
    return f.Error("model_type", absl::StrCat("names unknown model type '", c.model_type, "' (supported: ",
                                              absl::StrJoin(SupportedModelTypes(), ", "), ")"));
  }
  MOE_ASSIGN_OR_RETURN(c.vocab_size, f.Int("vocab_size", 1));
  MOE_ASSIGN_OR_RETURN(c.hidden_size, f.Int("hidden_size", 1));
  MOE_ASSIGN_OR_RETURN(c.num_layers, f.Int("num_hidden_layers", 1));
  MOE_ASSIGN_OR_RETURN(c.num_heads, f.Int("num_attention_heads", 1));
  MOE_ASSIGN_OR_RETURN(c.num_kv_heads, f.Int("num_key_value_heads", 1, c.num_heads));
  if (c.num_heads % c.num_kv_heads != 0) {
    return f.Error("num_key_value_heads", "must divide num_attention_heads");
  }
  if (c.hidden_size % c.num_heads != 0 && !f.Has("head_dim")) {
    return f.Error("num_attention_heads", "must divide hidden_size (or give head_dim)");
  }
  MOE_ASSIGN_OR_RETURN(c.head_dim, f.Int("head_dim", 2, c.hidden_size / c.num_heads));
  if (c.head_dim % 2 != 0) return f.Error("head_dim", "must be even (rotary embeddings)");
  MOE_ASSIGN_OR_RETURN(c.max_position_embeddings, f.Int("max_position_embeddings", 1, int64_t{4096}));
  MOE_ASSIGN_OR_RETURN(c.rms_norm_eps, f.Real("rms_norm_eps", 1e-6, true));
  MOE_ASSIGN_OR_RETURN(c.rope_theta, f.Real("rope_theta", 10000.0, true));
  MOE_ASSIGN_OR_RETURN(c.sliding_window, f.Int("sliding_window", 0, int64_t{0}));
  MOE_ASSIGN_OR_RETURN(c.tie_word_embeddings, f.Bool("tie_word_embeddings", false));
  MOE_ASSIGN_OR_RETURN(c.bos_token_id, f.Int("bos_token_id", -1, int64_t{-1}));
  MOE_ASSIGN_OR_RETURN(c.eos_token_ids, f.IntList("eos_token_id"));
  MOE_ASSIGN_OR_RETURN(c.norm_topk_prob, f.Bool("norm_topk_prob", c.arch->default_norm_topk_prob));

  if (c.model_type == "mixtral") {
    MOE_ASSIGN_OR_RETURN(c.num_experts, f.Int("num_local_experts", 1));
    MOE_ASSIGN_OR_RETURN(c.expert_ffn_size, f.Int("intermediate_size", 1));
    c.dense_ffn_size = c.expert_ffn_size;
    c.norm_topk_prob = true;  // Mixtral always renormalizes the top-k weights
  } else {  // qwen2_moe
    MOE_ASSIGN_OR_RETURN(c.num_experts, f.Int("num_experts", 1));
    MOE_ASSIGN_OR_RETURN(c.expert_ffn_size, f.Int("moe_intermediate_size", 1));
    MOE_ASSIGN_OR_RETURN(c.dense_ffn_size, f.Int("intermediate_size", 1));
    MOE_ASSIGN_OR_RETURN(c.shared_expert_ffn_size, f.Int("shared_expert_intermediate_size", 0, int64_t{0}));
    MOE_ASSIGN_OR_RETURN(c.decoder_sparse_step, f.Int("decoder_sparse_step", 1, int64_t{1}));
    MOE_ASSIGN_OR_RETURN(c.mlp_only_layers, f.IntList("mlp_only_layers"));
    MOE_ASSIGN_OR_RETURN(bool sliding, f.Bool("use_sliding_window", false));
    if (!sliding) c.sliding_window = 0;
  }
  MOE_ASSIGN_OR_RETURN(c.top_k, f.Int("num_experts_per_tok", 1));
  if (c.top_k > c.num_experts) return f.Error("num_experts_per_tok", "must be <= the number of experts");
  for (int64_t l : c.mlp_only_layers) {
    if (l < 0 || l >= c.num_layers) return f.Error("mlp_only_layers", absl::StrCat("holds layer ", l, " out of range"));
  }
  if (c.bos_token_id >= c.vocab_size) return f.Error("bos_token_id", "must be < vocab_size");
  for (int64_t e : c.eos_token_ids) {
    if (e < 0 || e >= c.vocab_size) return f.Error("eos_token_id", "must be in [0, vocab_size)");
  }
  return c;
}

absl::StatusOr<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  return FromJson(ss.str(), path);
}

bool ModelConfig::IsMoeLayer(int64_t layer) const {
  for (int64_t l : mlp_only_layers) {
    if (l == layer) return false;
  }
  return num_experts > 0 && (layer + 1) % decoder_sparse_step == 0;
}

std::string ModelConfig::LayerTensor(int64_t layer, absl::string_view suffix) const {
  return absl::StrCat("model.layers.", layer, ".", suffix);
}

std::string ModelConfig::ExpertTensor(int64_t layer, int64_t expert, FfnProjection p) const {
  return absl::StrCat("model.layers.", layer, ".", arch->moe_block, ".experts.", expert, ".",
                      ProjectionName(*arch, p), ".weight");
}

std::string ModelConfig::RouterGateTensor(int64_t layer) const {
  return absl::StrCat("model.layers.", layer, ".", arch->moe_block, ".gate.weight");
}

std::string ModelConfig::SharedExpertTensor(int64_t layer, FfnProjection p) const {
  return absl::StrCat("model.layers.", layer, ".mlp.shared_expert.", HfProjectionName(p), ".weight");
}

std::string ModelConfig::SharedExpertGateTensor(int64_t layer) const {
  return absl::StrCat("model.layers.", layer, ".mlp.shared_expert_gate.weight");
}

std::string ModelConfig::DenseMlpTensor(int64_t layer, FfnProjection p) const {
  return absl::StrCat("model.layers.", layer, ".mlp.", HfProjectionName(p), ".weight");
}

std::vector<std::pair<std::string, std::vector<int64_t>>> ModelConfig::ExpectedTensors() const {
  std::vector<std::pair<std::string, std::vector<int64_t>>> t;
  const int64_t h = hidden_size, q = num_heads * head_dim, kv = num_kv_heads * head_dim;
  t.push_back({"model.embed_tokens.weight", {vocab_size, h}});
  auto ffn = [&](auto name_of, int64_t size) {
    t.push_back({name_of(FfnProjection::kGate), {size, h}});
    t.push_back({name_of(FfnProjection::kUp), {size, h}});
    t.push_back({name_of(FfnProjection::kDown), {h, size}});
  };
  for (int64_t l = 0; l < num_layers; ++l) {
    t.push_back({LayerTensor(l, "input_layernorm.weight"), {h}});
    t.push_back({LayerTensor(l, "self_attn.q_proj.weight"), {q, h}});
    t.push_back({LayerTensor(l, "self_attn.k_proj.weight"), {kv, h}});
    t.push_back({LayerTensor(l, "self_attn.v_proj.weight"), {kv, h}});
    if (arch->attention_bias) {
      t.push_back({LayerTensor(l, "self_attn.q_proj.bias"), {q}});
      t.push_back({LayerTensor(l, "self_attn.k_proj.bias"), {kv}});
      t.push_back({LayerTensor(l, "self_attn.v_proj.bias"), {kv}});
    }
    if (arch->qk_norm) {
      t.push_back({LayerTensor(l, "self_attn.q_norm.weight"), {q}});
      t.push_back({LayerTensor(l, "self_attn.k_norm.weight"), {kv}});
    }
    t.push_back({LayerTensor(l, "self_attn.o_proj.weight"), {h, q}});
    t.push_back({LayerTensor(l, "post_attention_layernorm.weight"), {h}});
    if (IsMoeLayer(l)) {
      t.push_back({RouterGateTensor(l), {num_experts, h}});
      for (int64_t e = 0; e < num_experts; ++e) {
        ffn([&](FfnProjection p) { return ExpertTensor(l, e, p); }, expert_ffn_size);
      }
      if (shared_expert_ffn_size > 0) {
        ffn([&](FfnProjection p) { return SharedExpertTensor(l, p); }, shared_expert_ffn_size);
        t.push_back({SharedExpertGateTensor(l), {1, h}});
      }
    } else {
      ffn([&](FfnProjection p) { return DenseMlpTensor(l, p); }, dense_ffn_size);
    }
  }
  t.push_back({"model.norm.weight", {h}});
  if (!tie_word_embeddings) t.push_back({"lm_head.weight", {vocab_size, h}});
  return t;
}

}  // namespace moe
