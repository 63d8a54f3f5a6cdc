// Capacity planning: searches worker count, expert-parallel size and placement options for the
// cheapest cluster that meets a latency SLO at a given load, by simulating each candidate.
#ifndef MOE_SIMULATION_PLANNER_H_
#define MOE_SIMULATION_PLANNER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "simulation/serving.h"
#include "simulation/workload.h"

namespace moe::sim {

struct Slo {
  double ttft_p99_s = 1.0;
  double inter_token_p99_s = 0.1;
};

struct PlanSearch {
  std::vector<int> gpu_counts;          // total accelerators to try, ascending
  std::vector<int> expert_parallel;     // EP sizes to try (each must divide the GPU count)
  std::vector<double> replicate_above;  // placement options (0: no replication)
  double device_memory_bytes = 80e9;    // weights must fit in this share of it...
  double weight_memory_fraction = 0.9;  // ...the rest is KV cache and activations
};

struct PlanRow {
  int gpus = 0, expert_parallel = 0, replicas = 0;
  double replicate_above = 0;
  std::string all_to_all;
  double cost_per_hour = 0;
  double weight_bytes_per_gpu = 0;
  bool feasible = false;
  std::string why;  // what fails (memory, SLO, rejections), or what meets it
  SimReport report;  // empty when not simulated (weights do not fit)
};

// Weight bytes one worker holds when experts are spread over `expert_parallel` workers: everything but
// the routed experts in full, plus its share of the routed experts.
double WeightBytesPerWorker(const ModelShape& shape, int expert_parallel);

// Every candidate, cheapest feasible first (then by p99 inter-token latency), infeasible after.
// `base` gives device, topology shape, batching and per-GPU cost; its workers/replicas are replaced.
absl::StatusOr<std::vector<PlanRow>> PlanCluster(const SimulationInputs& inputs, const ClusterSpec& base, const Slo& slo,
                                                 const PlanSearch& search);

}  // namespace moe::sim

#endif  // MOE_SIMULATION_PLANNER_H_
