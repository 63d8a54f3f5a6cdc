// Which worker owns each expert of each MoE layer, at one epoch. Produced by the coordinator's
// placement function, shipped to every worker, used by dispatch planning and by the simulator.
#ifndef MOE_COMMON_SHARD_MAP_H_
#define MOE_COMMON_SHARD_MAP_H_

#include <cstdint>
#include <string>
#include <vector>

namespace moe {

struct ShardMap {
  uint64_t epoch = 0;
  int num_workers = 0;
  // Pipeline stages: [first_layer, end_layer) and the workers of that stage's expert-parallel group.
  // A single stage holding every layer and every worker is what runs today.
  struct Stage {
    int64_t first_layer = 0;
    int64_t end_layer = 0;
    std::vector<int> workers;
  };
  std::vector<Stage> stages;
  // owners[layer][expert] = workers holding that expert (replicas); empty for dense layers.
  std::vector<std::vector<std::vector<int>>> owners;
  std::vector<std::string> worker_addresses;

  // The stage layout used today: one stage holding every layer and every worker.
  static std::vector<Stage> SingleStage(int64_t num_layers, int num_workers) {
    Stage stage{0, num_layers, {}};
    for (int w = 0; w < num_workers; ++w) stage.workers.push_back(w);
    return {stage};
  }

  bool Owns(int worker, int64_t layer, int64_t expert) const {
    for (int w : owners[layer][expert]) {
      if (w == worker) return true;
    }
    return false;
  }
  // The replica that serves `token` of worker `from`: `from` itself when it holds one (the token then
  // stays local), else one spread deterministically over the replicas by token.
  int OwnerFor(int64_t layer, int64_t expert, int64_t token, int from) const {
    const auto& o = owners[layer][expert];
    for (int w : o) {
      if (w == from) return w;
    }
    return o[static_cast<size_t>(token) % o.size()];
  }
};

}  // namespace moe

#endif  // MOE_COMMON_SHARD_MAP_H_
