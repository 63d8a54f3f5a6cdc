// Expert placement: a pure function from (model, workers, measured expert load) to a ShardMap.
// The coordinator calls it live; the simulator calls the same function.
#ifndef MOE_COORDINATOR_PLACEMENT_H_
#define MOE_COORDINATOR_PLACEMENT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/model_config.h"
#include "common/shard_map.h"

namespace moe {

struct PlacementOptions {
  // An expert whose load exceeds this multiple of its layer's mean per-expert load gets one more
  // replica (on the least-loaded other worker). <= 0 disables replication.
  double replicate_above = 0.0;
  // Task expert maps: true places a map's merged experts (and a replica of each original expert it
  // keeps) on one home worker, where its requests run, so its tokens stay there; false spreads merged
  // experts round-robin over the workers like any expert, and its requests go anywhere.
  bool task_maps_at_home = true;
};

// Per layer, experts are taken from most to least loaded and each goes to the worker with the least
// load so far (ties: fewer experts, then lower id). `expert_load[layer][expert]` is measured load
// (e.g. tokens routed); empty means uniform. INVALID_ARGUMENT for num_workers < 1 or a load table of
// the wrong shape.
absl::StatusOr<ShardMap> PlaceExperts(const ModelConfig& config, int num_workers,
                                      const std::vector<std::vector<double>>& expert_load,
                                      const PlacementOptions& options, uint64_t epoch);

// Reads measured expert load for PlaceExperts from a JSON file: either moe-eval's --json output (the
// per-task "expert_usage" tables are summed) or {"expert_load": [[...], ...]}. INVALID_ARGUMENT naming
// the file when it does not parse or its shape does not match `config` (dense layers may be empty).
absl::StatusOr<std::vector<std::vector<double>>> ReadExpertLoadFile(const std::string& path, const ModelConfig& config);

}  // namespace moe

#endif  // MOE_COORDINATOR_PLACEMENT_H_
