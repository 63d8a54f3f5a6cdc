// Which model an offline artifact (task expert map, layer router) was made for. Artifacts carry the
// identity of their model and are served only on a model with the same one.
#ifndef MOE_ROUTER_MODEL_IDENTITY_H_
#define MOE_ROUTER_MODEL_IDENTITY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "checkpoint/model_source.h"
#include "checkpoint/tokenizer.h"
#include "nlohmann/json_fwd.hpp"

namespace moe {

struct ModelIdentity {
  std::string model_type;
  int64_t num_layers = 0, num_experts = 0, hidden_size = 0, expert_ffn_size = 0;
  std::string router_fingerprint;  // FNV-1a 64 (hex) over every router gate's values
  bool operator==(const ModelIdentity&) const = default;
};

absl::StatusOr<ModelIdentity> IdentifyModel(const ModelSource& source);

// What the offline router tools (moe-prune, moe-layer-route) work on: a checkpoint with its tokenizer.
struct ToolModel {
  std::shared_ptr<const ModelSource> source;
  std::unique_ptr<Tokenizer> tokenizer;
  ModelIdentity identity;
};
// Errors name what is missing (no checkpoint, no tokenizer.model).
absl::StatusOr<ToolModel> OpenToolModel(const std::string& dir);

// OK when `artifact_model` is `served`; FAILED_PRECONDITION naming `artifact` and both models otherwise.
absl::Status CheckSameModel(const ModelIdentity& artifact_model, const ModelIdentity& served,
                            const std::string& artifact);

// {"model_type", "num_layers", "num_experts", "hidden_size", "expert_ffn_size", "router_fingerprint"}.
nlohmann::json ModelIdentityToJson(const ModelIdentity& id);
// Throws nlohmann::json::exception when a field is missing or mistyped.
ModelIdentity ModelIdentityFromJson(const nlohmann::json& j);

}  // namespace moe

#endif  // MOE_ROUTER_MODEL_IDENTITY_H_
