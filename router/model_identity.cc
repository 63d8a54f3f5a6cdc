#include "router/model_identity.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace moe {

absl::StatusOr<ModelIdentity> IdentifyModel(const ModelSource& source) {
  const ModelConfig& c = source.config();
  ModelIdentity id{c.model_type, c.num_layers, c.num_experts, c.hidden_size, c.expert_ffn_size, ""};
  uint64_t hash = 1469598103934665603ull;  // FNV-1a 64 over the gates' float32 bit patterns
  for (int64_t l = 0; l < c.num_layers; ++l) {
    if (!c.IsMoeLayer(l)) continue;
    MOE_ASSIGN_OR_RETURN(TensorView gate, source.Tensor(c.RouterGateTensor(l), {c.num_experts, c.hidden_size}));
    for (int64_t i = 0; i < gate.num_elements(); ++i) {
      const float v = LoadAsFloat(gate.data, gate.dtype, static_cast<size_t>(i));
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      for (int b = 0; b < 4; ++b) {
        hash ^= (bits >> (8 * b)) & 0xff;
        hash *= 1099511628211ull;
      }
    }
  }
  id.router_fingerprint = absl::StrFormat("%016x", hash);
  return id;
}

absl::StatusOr<ToolModel> OpenToolModel(const std::string& dir) {
  ToolModel m;
  MOE_ASSIGN_OR_RETURN(m.source, ModelSource::Open(dir));
  if (m.source->tokenizer_path().empty()) return absl::FailedPreconditionError(absl::StrCat(dir, ": the model has no tokenizer.model"));
  MOE_ASSIGN_OR_RETURN(m.tokenizer, Tokenizer::Load(m.source->tokenizer_path()));
  MOE_ASSIGN_OR_RETURN(m.identity, IdentifyModel(*m.source));
  return m;
}

absl::Status CheckSameModel(const ModelIdentity& artifact_model, const ModelIdentity& served,
                            const std::string& artifact) {
  if (artifact_model == served) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      artifact, " was made for another model (", artifact_model.model_type, ", ", artifact_model.num_layers,
      " layers, ", artifact_model.num_experts, " experts, router fingerprint ", artifact_model.router_fingerprint,
      "); this cluster serves ", served.model_type, ", ", served.num_layers, " layers, ", served.num_experts,
      " experts, router fingerprint ", served.router_fingerprint));
}

nlohmann::json ModelIdentityToJson(const ModelIdentity& id) {
  return {{"model_type", id.model_type},   {"num_layers", id.num_layers},
          {"num_experts", id.num_experts}, {"hidden_size", id.hidden_size},
          {"expert_ffn_size", id.expert_ffn_size}, {"router_fingerprint", id.router_fingerprint}};
}

ModelIdentity ModelIdentityFromJson(const nlohmann::json& m) {
  return {m.at("model_type").get<std::string>(), m.at("num_layers").get<int64_t>(),
          m.at("num_experts").get<int64_t>(),   m.at("hidden_size").get<int64_t>(),
          m.at("expert_ffn_size").get<int64_t>(), m.at("router_fingerprint").get<std::string>()};
}

}  // namespace moe
