// Task expert maps (UNCURL merges and frequency pruning): the on-disk format written by moe-prune, its
// validation against the model it was made for, and installing a map's merged experts into a process's
// expert tables so requests of that task route through it.
//
// On disk a map is a directory:
//   manifest.json       {"format": "moe-expert-map/1", "name", "task", "method", "experts_kept",
//                        "pruning_factor",
//                        "model": {model_type, num_layers, num_experts, hidden_size, expert_ffn_size,
//                                  router_fingerprint},
//                        "layers": [{"layer": l, "slot_to_expert": [E ints], "merged": [{"members": [...],
//                                    "usage": [...]}]}]}   (MoE layers only)
//   experts.safetensors layers.<l>.merged.<m>.{w1,w3}.weight [ffn, hidden] and .w2.weight [hidden, ffn]
// slot_to_expert[slot] is an original expert in [0, E) (kept as is), E + m for merged expert m of that
// layer, or -1 where the slot is dropped from the gate.
#ifndef MOE_ROUTER_EXPERT_MAP_H_
#define MOE_ROUTER_EXPERT_MAP_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/model_source.h"
#include "engine/expert_dispatch.h"
#include "engine/model_weights.h"
#include "router/model_identity.h"

namespace moe {

inline constexpr char kExpertMapFormat[] = "moe-expert-map/1";

// One SwiGLU expert in float32: gate and up [ffn, hidden], down [hidden, ffn], row-major.
struct ExpertFfn {
  int64_t ffn = 0, hidden = 0;
  std::vector<float> gate, up, down;
};

// Reads expert `expert` of MoE layer `layer` from the checkpoint as float32.
absl::StatusOr<ExpertFfn> ReadExpertFfn(const ModelSource& source, int64_t layer, int64_t expert);

struct MergedExpert {
  std::vector<int32_t> members;  // original experts folded into it, reference (most used) first
  std::vector<int64_t> usage;    // the members' token counts on the task's data, same order
  ExpertFfn weights;             // empty until read with weights
};

struct LayerExpertMap {
  int64_t layer = 0;
  std::vector<int32_t> slot_to_expert;  // [num_experts]; see the file comment
  std::vector<MergedExpert> merged;
  // Distinct experts a token of the task runs in this layer under the map, on average over the task's
  // data (top-k slots that share a target become one expert call); 0: not measured (maps written before).
  double experts_per_token = 0;
};

struct ExpertMap {
  std::string name;    // what requests name in GenerateRequest.task
  std::string task;    // the task whose data built it
  std::string method;  // "uncurl" or "frequency"
  int64_t experts_kept = 0;     // per MoE layer: groups (uncurl) or kept experts (frequency)
  double pruning_factor = 1.0;  // num_experts / experts_kept
  ModelIdentity model;
  std::vector<LayerExpertMap> layers;  // MoE layers, ascending

  // Distinct experts a token of this task can reach in `layer` (kept originals + merged).
  int64_t ReachableExperts(int64_t layer) const;
  // ReachableExperts averaged over the map's layers; 0 for a map without layers.
  double MeanReachableExperts() const;
  // experts_per_token averaged over the layers that have it; 0 when none has.
  double MeanExpertsPerToken() const;
};

// Checks the map's structure and that it belongs to `model` (identity, shapes, targets in range, every
// merged expert used, at least top_k live slots per layer). INVALID_ARGUMENT or FAILED_PRECONDITION
// (another model) naming the map and the offending field.
absl::Status ValidateExpertMap(const ExpertMap& map, const ModelIdentity& model, int64_t top_k);

// Writes manifest.json and experts.safetensors (merged weights stored as `dtype`) under `dir`.
absl::Status WriteExpertMap(const ExpertMap& map, const std::string& dir, DType dtype);

// Reads a map directory; with `with_weights` also the merged experts' weights. Structural errors are
// INVALID_ARGUMENT naming the file; it is not checked against a model here (ValidateExpertMap).
absl::StatusOr<ExpertMap> ReadExpertMap(const std::string& dir, bool with_weights);

// Expert table ids when `maps` are installed in this order: result[i][layer] is the first table id of
// map i's merged experts in that layer (num_experts + merged experts of maps before it). Every process
// computes the same ids from the same ordered list.
std::vector<std::vector<int32_t>> MergedExpertBaseIds(std::span<const ExpertMap> maps,
                                                      const ModelConfig& config);

// The map's gate-slot routing with merged experts at `base_ids` (one row of MergedExpertBaseIds).
SlotRouting ResolveSlotRouting(const ExpertMap& map, const std::vector<int32_t>& base_ids, const ModelConfig& config);

// Grows each MoE layer's expert table to hold the map's merged experts at `base_ids` and packs the ones
// `owns(layer, table_id)` accepts (null: all), stored like the layer's router (BF16 or F32).
// REQUIRES: the map was read with weights and validated.
void InstallMergedExperts(const ExpertMap& map, const std::vector<int32_t>& base_ids, ModelWeights* weights,
                          const std::function<bool(int64_t, int64_t)>& owns);

// Shrinks every expert table back to the checkpoint's experts (drops installed merged experts).
void RemoveMergedExperts(ModelWeights* weights);

}  // namespace moe

#endif  // MOE_ROUTER_EXPERT_MAP_H_
