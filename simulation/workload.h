// What the simulated cluster serves: the model's shape (from a checkpoint's config.json), how its
// tokens pick experts (real router statistics or a Zipf law), the task expert maps (UNCURL) and layer
// routers (Dr.LLM) some requests use, and the request stream (Poisson arrivals or a trace file).
#ifndef MOE_SIMULATION_WORKLOAD_H_
#define MOE_SIMULATION_WORKLOAD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/model_config.h"
#include "simulation/simulator.h"

namespace moe::sim {

struct ModelShape {
  std::string name;
  int64_t hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, vocab = 0;
  int64_t num_experts = 0, top_k = 0, expert_ffn = 0, dense_ffn = 0, shared_expert_ffn = 0;
  std::vector<bool> moe_layer;  // per layer
  double bytes_per_weight = 2;  // as served (the CPU engine: 4)
  double bytes_per_kv = 2;      // one cached key or value element
  // The expert-parallel wire format (worker/distributed_dispatcher.cc): one dispatch record per
  // (token, destination worker) holding the token's hidden state, its experts and weights; one combine
  // record (a hidden state) back; every message carries a header, empty or not.
  double activation_bytes = 2;  // one hidden-state element on the wire (the CPU cluster: 4)
  double DispatchRecordBytes() const { return 4.0 + 8.0 * static_cast<double>(top_k) + activation_bytes * static_cast<double>(hidden); }
  double CombineRecordBytes() const { return activation_bytes * static_cast<double>(hidden); }
  static constexpr double kMessageHeaderBytes = 8;

  // The shape of a config.json's model; bytes_per_weight and activation_bytes as given.
  static ModelShape FromConfig(const ModelConfig& config, const std::string& name, double bytes_per_weight,
                               double activation_bytes);
  int64_t num_moe_layers() const;
  // Weight bytes a worker streams per token-independent pass: attention + norms of one layer.
  double AttentionWeightBytes() const;
};

// Which experts a token picks: popularity[layer][expert], each MoE layer's row summing to 1 (dense
// layers: empty). A token takes top_k distinct experts, drawn in proportion to popularity.
struct ExpertPopularity {
  std::vector<std::vector<double>> popularity;

  // Zipf law with exponent `s` (0: uniform) over each MoE layer's experts, in a random order per layer.
  static ExpertPopularity Zipf(const ModelShape& shape, double s, uint64_t seed);
  // From measured load (coordinator/placement.h ReadExpertLoadFile's table): each row normalized.
  // INVALID_ARGUMENT for a wrong shape or a MoE layer without any load.
  static absl::StatusOr<ExpertPopularity> FromLoad(const ModelShape& shape, const std::vector<std::vector<double>>& load);
};

// A class of requests: a task with its expert map (UNCURL) and/or layer router (Dr.LLM).
struct TaskProfile {
  std::string name;
  double share = 0;            // fraction of requests, in [0, 1]; what the tasks leave is the full model
  // Reachable experts per MoE layer under the task's map, as a fraction of num_experts, in (0, 1];
  // 1 = no map. The map's merged experts take the task's tokens uniformly.
  double kept_fraction = 1;
  // Layers a token runs, as a fraction of the model's layers (Dr.LLM's measured layers per token / L),
  // in (0, 1]; 1 = no layer router.
  double layer_run_rate = 1;
  // Distinct experts a token of the task runs per MoE layer under its map (top-k slots that share a
  // merged expert become one call; moe-prune measures it: ExpertMap::MeanExpertsPerToken), in
  // [1, top_k]; 0: top_k.
  double experts_per_token = 0;
};

struct SimRequest {
  Nanos arrival = 0;
  int64_t prompt_tokens = 0, output_tokens = 0;
  int task = -1;  // index into the workload's tasks; -1: the full model
};

struct WorkloadSpec {
  double rate = 1;           // requests per second (Poisson), when no trace is given
  double duration_s = 60;    // arrivals stop after this
  // Closed loop (the load generator moe-loadgen): `concurrency` clients, each sending its next request
  // when its previous one has finished, `requests` in all. 0: open loop (rate or trace).
  int concurrency = 0;
  int64_t requests = 0;
  int64_t prompt_min = 16, prompt_max = 16;  // uniform, inclusive
  int64_t output_min = 32, output_max = 32;
  std::string trace_path;    // CSV rows: arrival_s,prompt_tokens,output_tokens[,task name]
  double zipf = 0;           // expert popularity, unless expert_load_path is given
  std::string expert_load_path;  // moe-eval --json or {"expert_load": ...}
  std::vector<TaskProfile> tasks;
  uint64_t seed = 1;

  // From a JSON object with these field names (all optional). INVALID_ARGUMENT naming the field.
  static absl::StatusOr<WorkloadSpec> FromJson(const std::string& json_text, const std::string& source);
  absl::Status Validate() const;
};

// The request stream: the trace's rows; in a closed loop `requests` requests (arrival 0: the simulation
// sends each when a client is free); or Poisson arrivals at `rate` for `duration_s` with uniform
// lengths and tasks drawn by share. Sorted by arrival. INVALID_ARGUMENT naming the trace line for a bad row.
absl::StatusOr<std::vector<SimRequest>> GenerateRequests(const WorkloadSpec& spec);

}  // namespace moe::sim

namespace moe::sim {

// Everything the tools read before simulating: the model (a checkpoint directory or its config.json),
// the workload file, and from them the popularity table and the request stream.
struct SimulationInputs {
  ModelConfig config;
  ModelShape shape;
  WorkloadSpec workload;
  ExpertPopularity popularity;
  std::vector<SimRequest> requests;
};
// `bytes_per_weight` and `activation_bytes` as in ModelShape. A relative trace or expert_load path in
// the workload file is taken relative to the file's directory.
absl::StatusOr<SimulationInputs> LoadSimulationInputs(const std::string& model_path, const std::string& workload_path,
                                                      double bytes_per_weight, double activation_bytes);
// Reads a whole file; NOT_FOUND naming it.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

}  // namespace moe::sim

#endif  // MOE_SIMULATION_WORKLOAD_H_
