#include "simulation/serving.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <memory>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "simulation/json_fields.h"
#include "simulation/network.h"
#include "simulation/topology.h"
#include "simulation/topology_config.h"

namespace moe::sim {

// ---- LatencyHistogram ------------------------------------------------------------------------------

namespace {
constexpr double kBucketGrowth = 1.01;  // 1% relative resolution
const double kLogGrowth = std::log(kBucketGrowth);
int BucketOf(Nanos v) { return v <= 1 ? 0 : static_cast<int>(std::log(static_cast<double>(v)) / kLogGrowth) + 1; }
double BucketUpperNanos(int b) { return b == 0 ? 1.0 : std::exp(kLogGrowth * b); }
}  // namespace

void LatencyHistogram::Add(Nanos value) {
  const int b = BucketOf(std::max<Nanos>(value, 0));
  if (b >= static_cast<int>(buckets_.size())) buckets_.resize(static_cast<size_t>(b) + 1, 0);
  ++buckets_[b];
  ++count_;
  sum_ns_ += static_cast<double>(value);
}

double LatencyHistogram::Percentile(double q) const {
  if (count_ == 0) return 0;
  const int64_t rank = std::min<int64_t>(count_ - 1, static_cast<int64_t>(q * static_cast<double>(count_)));
  int64_t seen = 0;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    seen += buckets_[b];
    if (seen > rank) return BucketUpperNanos(static_cast<int>(b)) * 1e-9;
  }
  return BucketUpperNanos(static_cast<int>(buckets_.size()) - 1) * 1e-9;
}

std::vector<std::pair<double, double>> LatencyHistogram::Cdf() const {
  std::vector<std::pair<double, double>> cdf;
  int64_t seen = 0;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    if (buckets_[b] == 0) continue;
    seen += buckets_[b];
    cdf.emplace_back(BucketUpperNanos(static_cast<int>(b)) * 1e-9, static_cast<double>(seen) / static_cast<double>(count_));
  }
  return cdf;
}

// ---- ClusterSpec -----------------------------------------------------------------------------------

absl::StatusOr<ClusterSpec> ClusterSpec::FromJson(const std::string& json_text, const std::string& source,
                                                  const std::string& base_dir) {
  const nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  JsonFields f(j, source);
  ClusterSpec c;
  c.name = f.String("name", c.name);
  // The device: a preset name or an object of its own.
  const nlohmann::json& device = f.Raw("device");
  if (device.is_string()) {
    const std::string d = device.get<std::string>();
    if (d == "H100") c.device = H100Profile();
    else if (d == "H200") c.device = H200Profile();
    else if (d == "A100") c.device = A100Profile();
    else f.Fail("device", "must be H100, H200, A100 or an object {name, peak_tflops, memory_gbps, efficiency}");
  } else if (device.is_object()) {
    JsonFields d(device, source + ".device");
    c.device.name = d.String("name", "device");
    c.device.peak_flops = d.Number("peak_tflops", 0) * 1e12;
    c.device.memory_bandwidth = d.Number("memory_gbps", 0) * 1e9;
    const nlohmann::json& curve = d.Raw("efficiency");
    if (!curve.is_null() && !curve.is_array()) d.Fail("efficiency", "must be an array of [tokens, fraction] pairs");
    for (size_t i = 0; curve.is_array() && i < curve.size(); ++i) {
      if (!curve[i].is_array() || curve[i].size() != 2 || !curve[i][0].is_number_integer() || !curve[i][1].is_number()) {
        d.Fail(absl::StrCat("efficiency[", i, "]"), "must be [tokens, fraction]");
        break;
      }
      c.device.efficiency.emplace_back(curve[i][0].get<int64_t>(), curve[i][1].get<double>());
    }
    MOE_RETURN_IF_ERROR(d.status());
    if (absl::Status s = c.device.Validate(); !s.ok()) return absl::InvalidArgumentError(absl::StrCat(source, ".device: ", s.message()));
  } else {
    f.Fail("device", "is required: H100, H200, A100 or an object");
  }
  c.topology = f.String("topology", c.topology);
  const nlohmann::json& shape = f.Raw("shape");
  if (!shape.is_null()) {
    JsonFields s(shape, source + ".shape");
    c.shape.hosts = static_cast<int>(s.Int("hosts", c.shape.hosts, 1, 1 << 20));
    c.shape.gpus_per_host = static_cast<int>(s.Int("gpus_per_host", c.shape.gpus_per_host, 1, 1 << 12));
    c.shape.intra_host_bandwidth = s.Number("intra_host_gbps", c.shape.intra_host_bandwidth / 1e9, 1e-9) * 1e9;
    c.shape.intra_host_latency = s.Int("intra_host_latency_ns", c.shape.intra_host_latency, 0);
    c.shape.nic_bandwidth = s.Number("nic_gbps", c.shape.nic_bandwidth / 1e9, 1e-9) * 1e9;
    c.shape.nic_latency = s.Int("nic_latency_ns", c.shape.nic_latency, 0);
    c.shape.hosts_per_leaf = static_cast<int>(s.Int("hosts_per_leaf", c.shape.hosts_per_leaf, 1, 1 << 20));
    c.shape.spine_bandwidth = s.Number("spine_gbps", c.shape.spine_bandwidth / 1e9, 1e-9) * 1e9;
    MOE_RETURN_IF_ERROR(s.status());
  }
  if (c.topology == "json") {
    const std::string file = f.String("topology_file", "");
    if (file.empty()) {
      f.Fail("topology_file", "is required with topology \"json\"");
    } else {
      const std::string path = file[0] == '/' || base_dir.empty() ? file : base_dir + "/" + file;
      absl::StatusOr<std::string> text = ReadTextFile(path);
      if (!text.ok()) return absl::NotFoundError(absl::StrCat(source, ".topology_file: ", text.status().message()));
      c.topology_json = *std::move(text);
    }
    const nlohmann::json& acc = f.Raw("accelerators");
    if (!acc.is_array()) f.Fail("accelerators", "must list the topology's nodes the workers run on");
    for (size_t i = 0; acc.is_array() && i < acc.size(); ++i) {
      if (!acc[i].is_string()) f.Fail(absl::StrCat("accelerators[", i, "]"), "must be a node name");
      else c.json_accelerators.push_back(acc[i].get<std::string>());
    }
  }
  c.all_to_all = f.String("all_to_all", c.all_to_all);
  c.workers = static_cast<int>(f.Int("workers", c.workers, 1, 1 << 20));
  c.replicas = static_cast<int>(f.Int("replicas", c.replicas, 1, 1 << 20));
  c.step_overhead = f.Int("step_overhead_ns", 0, 0);
  c.sequence_overhead = f.Int("sequence_overhead_ns", 0, 0);
  c.step_overhead_curve = f.Curve("step_overhead_curve_ns", 0);
  if (!c.step_overhead_curve.empty() && (c.step_overhead > 0 || c.sequence_overhead > 0)) {
    f.Fail("step_overhead_curve_ns", "replaces step_overhead_ns and sequence_overhead_ns: give one or the other");
  }
  c.step_gap_curve = f.Curve("step_gap_curve_ns", 0);
  c.prefill_step_overhead = f.Int("prefill_step_overhead_ns", 0, 0);
  c.prefill_row_overhead = f.Int("prefill_row_overhead_ns", 0, 0);
  c.request_overhead = f.Int("request_overhead_ns", 0, 0);
  c.token_delivery_curve = f.Curve("token_delivery_curve_ns", 0);
  c.stream_close_curve = f.Curve("stream_close_curve_ns", 0);
  c.front_end_jitter = f.Bool("front_end_jitter", false);
  c.front_end_jitter_stages = static_cast<int>(f.Int("front_end_jitter_stages", c.front_end_jitter_stages, 1, 64));
  c.collective_overhead = f.Int("collective_overhead_ns", 0, 0);
  c.host_cores = static_cast<int>(f.Int("host_cores", 0, 0, 1 << 20));
  c.max_queued = static_cast<int>(f.Int("max_queued", c.max_queued, 0, 1 << 30));
  c.expert_slots = static_cast<int>(f.Int("expert_slots", 0, 0, 1 << 20));
  c.batch.max_running = static_cast<int>(f.Int("max_running", c.batch.max_running, 1, 1 << 20));
  c.batch.max_batch_tokens = f.Int("max_batch_tokens", c.batch.max_batch_tokens, 1);
  c.placement.replicate_above = f.Number("replicate_above", 0);
  c.placement.task_maps_at_home = f.Bool("task_maps_at_home", true);
  c.device_hour_cost = f.Number("device_hour_cost", 1, 0);
  const std::string fidelity = f.String("fidelity", "auto");
  if (fidelity == "flow") c.fidelity = Fidelity::kFlow;
  else if (fidelity == "fluid") c.fidelity = Fidelity::kFluid;
  else if (fidelity == "auto") c.fidelity = c.workers * c.replicas <= kAutoFlowWorkers && c.all_to_all == "direct" ? Fidelity::kFlow : Fidelity::kFluid;
  else f.Fail("fidelity", "must be flow, fluid or auto");
  MOE_RETURN_IF_ERROR(f.status());
  return c;
}

absl::StatusOr<ClusterSpec> ClusterSpec::FromFile(const std::string& path) {
  MOE_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  return FromJson(text, path, path.find('/') == std::string::npos ? "." : path.substr(0, path.find_last_of('/')));
}

absl::Status ClusterSpec::Validate(const ModelShape& model) const {
  MOE_RETURN_IF_ERROR(device.Validate());
  const std::string where = absl::StrCat("cluster '", name, "': ");
  static const char* kTopologies[] = {"loopback", "single_node", "rail_optimized", "fat_tree", "json"};
  if (std::find(std::begin(kTopologies), std::end(kTopologies), topology) == std::end(kTopologies)) {
    return absl::InvalidArgumentError(where + "topology must be loopback, single_node, rail_optimized, fat_tree or json");
  }
  if (all_to_all != "direct" && all_to_all != "hierarchical") {
    return absl::InvalidArgumentError(where + "all_to_all must be direct or hierarchical");
  }
  if (workers < 1 || replicas < 1) return absl::InvalidArgumentError(where + "workers and replicas must be >= 1");
  if (topology == "json" && fidelity == Fidelity::kFluid) {
    return absl::InvalidArgumentError(where + "topology \"json\" needs fidelity flow (fluid reads the ports of a preset)");
  }
  if (all_to_all == "hierarchical" && fidelity == Fidelity::kFlow) {
    return absl::InvalidArgumentError(where + "all_to_all hierarchical is modelled in fidelity fluid only");
  }
  if (topology == "json" && static_cast<int>(json_accelerators.size()) < total_workers()) {
    return absl::InvalidArgumentError(absl::StrCat(where, "accelerators lists ", json_accelerators.size(),
                                                   " nodes; workers x replicas = ", total_workers()));
  }
  int64_t slots = 0;  // accelerators the preset offers
  if (topology == "loopback") slots = INT64_MAX;
  else if (topology == "single_node") slots = shape.gpus_per_host;
  else if (topology != "json") slots = static_cast<int64_t>(shape.hosts) * shape.gpus_per_host;
  if (topology != "json" && total_workers() > slots) {
    return absl::InvalidArgumentError(absl::StrCat(where, "shape offers ", slots, " accelerators; workers x replicas = ",
                                                   total_workers()));
  }
  if (model.num_moe_layers() > 0 && model.num_experts < 1) return absl::InvalidArgumentError(where + "model has MoE layers without experts");
  if (batch.max_running < 1 || batch.max_batch_tokens < 1) {
    return absl::InvalidArgumentError(where + "max_running and max_batch_tokens must be >= 1");
  }
  if (host_cores < 0) return absl::InvalidArgumentError(where + "host_cores must be >= 0");
  return absl::OkStatus();
}

// ---- The simulation ---------------------------------------------------------------------------------

namespace {

// Time bucketed series that keeps at most kMaxBuckets buckets, doubling the width when it must.
class UtilizationSeries {
 public:
  static constexpr int kMaxBuckets = 128;
  explicit UtilizationSeries(int links) : links_(links) {}

  // `bytes[i]` moved over link first_link + i during [t0, t1].
  void Add(Nanos t0, Nanos t1, int first_link, const std::vector<double>& bytes) {
    while (t1 >= width_ * kMaxBuckets) Coarsen();
    if (t1 <= t0) t1 = t0 + 1;
    const int b0 = static_cast<int>(t0 / width_), b1 = static_cast<int>((t1 - 1) / width_);
    for (int b = b0; b <= b1; ++b) {
      const double lo = std::max<double>(static_cast<double>(t0), static_cast<double>(b) * static_cast<double>(width_));
      const double hi = std::min<double>(static_cast<double>(t1), static_cast<double>(b + 1) * static_cast<double>(width_));
      const double share = (hi - lo) / static_cast<double>(t1 - t0);
      Bucket(b);
      for (size_t i = 0; i < bytes.size(); ++i) {
        if (bytes[i] != 0) buckets_[b][first_link + i] += bytes[i] * share;
      }
    }
  }
  // Per interval: the busiest link's and the mean utilization, given each link's bandwidth.
  void Finish(Nanos end, const std::vector<double>& bandwidth, SimReport* report) const {
    report->series_interval_s = static_cast<double>(width_) * 1e-9;
    const int n = std::min<int>(static_cast<int>(buckets_.size()), static_cast<int>(end / width_) + 1);
    for (int b = 0; b < n; ++b) {
      double busiest = 0, sum = 0;
      for (int l = 0; l < links_; ++l) {
        const double u = buckets_[b][l] / (bandwidth[l] * static_cast<double>(width_) * 1e-9);
        busiest = std::max(busiest, u);
        sum += u;
      }
      report->busiest_link_series.push_back(busiest);
      report->mean_link_series.push_back(links_ ? sum / links_ : 0);
    }
  }

 private:
  void Bucket(int b) {
    while (static_cast<int>(buckets_.size()) <= b) buckets_.emplace_back(static_cast<size_t>(links_), 0.0);
  }
  void Coarsen() {
    std::vector<std::vector<double>> merged((buckets_.size() + 1) / 2, std::vector<double>(static_cast<size_t>(links_), 0.0));
    for (size_t b = 0; b < buckets_.size(); ++b) {
      for (int l = 0; l < links_; ++l) merged[b / 2][l] += buckets_[b][l];
    }
    buckets_ = std::move(merged);
    width_ *= 2;
  }
  int links_;
  Nanos width_ = 1'000'000;  // 1 ms to start
  std::vector<std::vector<double>> buckets_;
};

// The chance that a token's top_k distinct experts include at least one of a set holding `mass` of the
// routing probability among `experts`: exact for uniform popularity (the set then counts mass x experts
// experts; drawing without replacement), an estimate otherwise.
double HitProbability(double mass, int64_t experts, int64_t top_k) {
  const double held = mass * static_cast<double>(experts);
  double miss = 1;
  for (int64_t i = 0; i < top_k && i < experts; ++i) {
    miss *= std::max(0.0, (static_cast<double>(experts - i) - held) / static_cast<double>(experts - i));
  }
  return 1.0 - miss;
}

struct Sequence {
  int64_t request = 0;
  int task = -1;
  int rank = 0;
  int64_t prompt = 0, output = 0, generated = 0;
  bool started = false;
  Nanos arrival = 0, enqueued = 0, last_token = 0;  // the client's send, reaching the queue, last delivery
};

// One step's batch on one worker, aggregated for the compute model.
// Token counts are expected rows per layer: a row of a request with a layer router runs a layer with
// probability layer_run_rate.
struct WorkerBatch {
  int64_t sequences = 0;     // one sampled token each
  int64_t rows = 0;          // token rows processed (prefill + decode)
  double tokens = 0;         // expected rows running a layer
  double attended = 0;       // expected positions attended, summed over those rows
  double kv_positions = 0;   // expected cached positions read (each sequence's context once)
  double general_tokens = 0; // expected rows routed by the full model's router (the rest: home task maps)
  std::vector<std::pair<int, double>> home;  // (task, expected rows) whose map lives on this worker
};

// Sequences in a replica's step, over all its workers.
int64_t SequencesIn(const std::vector<WorkerBatch>& batches) {
  int64_t n = 0;
  for (const WorkerBatch& b : batches) n += b.sequences;
  return n;
}

// Workers with sequences in a replica's step: those that run the LM head and sample.
int WorkersWithSequences(const std::vector<WorkerBatch>& batches) {
  int n = 0;
  for (const WorkerBatch& b : batches) n += b.sequences > 0;
  return n;
}

// Rows a replica's step processes beyond one per sequence: the prompt tokens it prefills after each new
// sequence's first.
int64_t PrefillRowsIn(const std::vector<WorkerBatch>& batches) {
  int64_t n = 0;
  for (const WorkerBatch& b : batches) n += b.rows - b.sequences;
  return n;
}

// The step's serial software cost (ClusterSpec::StepOverhead) over all the replica's workers.
Nanos StepOverheadOf(const ClusterSpec& cluster, const std::vector<WorkerBatch>& batches) {
  return cluster.StepOverhead(SequencesIn(batches), PrefillRowsIn(batches));
}

// One flow-fidelity step of one replica: per layer, every worker's attention, dispatch, expert compute
// and combine as events; a worker goes on to its next layer as soon as its own combine has arrived.
struct FlowStep {
  struct Layer {
    std::vector<double> rows, attended, kv;               // per worker: rows running this layer
    std::vector<std::vector<int64_t>> records;            // [from][to] dispatch records
    std::vector<std::map<int64_t, int64_t>> expert_rows;  // per worker: expert (merged ids past E) -> rows
    std::vector<int> dispatch_pending, combine_pending;   // messages still to arrive, per worker
    std::vector<bool> attention_done, experts_done;
    // ClusterSpec::CoreShare of the workers with rows in this layer, and of those with experts to run.
    double attention_core_share = 1, expert_core_share = 1;
  };
  std::vector<Layer> layers;
  double head_core_share = 1;  // of the workers with sequences (the LM head)
  int workers_left = 0;
  std::vector<WorkerBatch> batches;
  // The phases, as events; they refer to this step by pointer (the replica owns it until the step ends).
  std::function<void(int, int64_t)> start_layer, experts_ready, layer_done;
};

class ServingSimulation {
 public:
  ServingSimulation(const ModelConfig& config, const ModelShape& shape, const ExpertPopularity& popularity,
                    const ClusterSpec& cluster, const WorkloadSpec& workload, const std::vector<SimRequest>& requests)
      : config_(config), shape_(shape), popularity_(popularity), cluster_(cluster), workload_(workload),
        requests_(requests), sim_(workload.seed), network_(&sim_), topology_(&network_), routing_rng_(sim_.Stream(11)), front_end_rng_(sim_.Stream(12)) {}

  absl::Status Setup();
  absl::StatusOr<SimReport> Run();
  SimReport Finish();

 private:
  struct Replica {
    int index = 0;
    std::deque<int64_t> queue;          // request indices
    std::map<uint64_t, Sequence> running;
    std::unique_ptr<BatchAdmission> admission;
    bool stepping = false;
    Nanos step_start = 0;
    Nanos intake_free = 0;              // when the coordinator can take in the next request
    Nanos close_free = 0;               // when the front end can close the next finished stream
    Nanos admits_at = 0;                // the next admission: the last step's end + its gap (step_gap_curve)
    std::unique_ptr<FlowStep> flow;     // flow: the step in progress
  };

  // ---- compute model: times on a whole device; OnShare stretches one to a share of it (host_cores)
  Nanos Roofline(double flops, double bytes, double tokens) const {
    if (flops <= 0 && bytes <= 0) return 0;
    const double eff = cluster_.device.EfficiencyAt(std::max<int64_t>(1, static_cast<int64_t>(std::llround(tokens))));
    const double s = std::max(flops / (cluster_.device.peak_flops * eff), bytes / cluster_.device.memory_bandwidth);
    return static_cast<Nanos>(std::ceil(s * 1e9));
  }
  static Nanos OnShare(Nanos whole_device, double share) {
    return share >= 1 ? whole_device : static_cast<Nanos>(std::ceil(static_cast<double>(whole_device) / share));
  }
  Nanos FfnTime(double tokens, int64_t ffn) const {
    if (tokens <= 0 || ffn <= 0) return 0;
    const double h = static_cast<double>(shape_.hidden), f = static_cast<double>(ffn);
    return Roofline(6.0 * tokens * h * f, 3.0 * h * f * shape_.bytes_per_weight, tokens);
  }
  // Attention (projections, scores, router gate) of one layer for `tokens` rows attending `attended`
  // positions in all, reading `kv_positions` cached positions.
  Nanos AttentionTime(double tokens, double attended, double kv_positions) const {
    if (tokens <= 0) return 0;
    const double h = static_cast<double>(shape_.hidden);
    const double q = static_cast<double>(shape_.heads * shape_.head_dim), kv = static_cast<double>(shape_.kv_heads * shape_.head_dim);
    const double flops = tokens * 2.0 * (2.0 * h * q + 2.0 * h * kv + h * static_cast<double>(shape_.num_experts)) +
                         4.0 * attended * q;
    const double bytes = shape_.AttentionWeightBytes() + kv_positions * 2.0 * kv * shape_.bytes_per_kv;
    return Roofline(flops, bytes, tokens);
  }
  Nanos LmHeadTime(double sampled) const {
    const double hv = static_cast<double>(shape_.hidden) * static_cast<double>(shape_.vocab);
    return sampled > 0 ? Roofline(2.0 * sampled * hv, hv * shape_.bytes_per_weight, sampled) : 0;
  }
  int MergedExperts(int task) const {
    return std::max<int>(1, static_cast<int>(std::llround(workload_.tasks[task].kept_fraction * static_cast<double>(shape_.num_experts))));
  }
  bool TaskAtHome(int task) const {
    return task >= 0 && workload_.tasks[task].kept_fraction < 1 && cluster_.placement.task_maps_at_home;
  }
  int HomeRank(int task) const { return TaskAtHome(task) ? task % cluster_.workers : -1; }
  double RunRate(int task) const { return task >= 0 ? workload_.tasks[task].layer_run_rate : 1.0; }
  // Distinct experts a row of `task` runs per MoE layer, on average (TaskProfile::experts_per_token).
  double ExpertsPerRow(int task) const {
    const double k = static_cast<double>(shape_.top_k);
    return task >= 0 && workload_.tasks[task].experts_per_token > 0 ? std::min(k, workload_.tasks[task].experts_per_token) : k;
  }

  // ---- serving
  // A request reaches its replica (round-robin by request index) and queues, or is refused.
  void Arrive(int64_t request);   // the client sends it
  void Enqueue(int64_t request);  // it reaches its replica's coordinator
  // Closed loop: a client is free; its next request, if any is left, arrives `after` from now.
  void SendNextClientRequest(Nanos after = 0);
  // A finished request's last token reached its client (now): its stream waits for the replica's front
  // end to close it, `cost` (stream_close_curve), after the closes already queued.
  void CloseStream(Replica& r, Nanos cost, Nanos arrival);
  // The stream ends at `closed` (now or later); the closed-loop client then sends its next request.
  void FinishStream(Nanos delivered, Nanos closed, Nanos arrival);
  Nanos FrontEndDelay(Nanos mean);  // mean, or a draw around it (ClusterSpec::front_end_jitter)
  void MaybeStartStep(Replica& r);
  void BeginStep(Replica& r);
  void EndStep(Replica& r, std::vector<WorkerBatch> batches);
  std::vector<WorkerBatch> ComposeBatches(Replica& r) const;
  Nanos FluidStepTime(const Replica& r, const std::vector<WorkerBatch>& batches);
  void RunFlowStep(Replica& r, std::vector<WorkerBatch> batches);
  // Per (layer, rank): the time its experts take on `general_tokens` tokens routed by the full model
  // (expected routing), memoized by the token count: a step reads one contiguous row.
  const std::vector<Nanos>& FluidExpertTimes(double general_tokens);

  const ModelConfig& config_;
  const ModelShape& shape_;
  const ExpertPopularity& popularity_;
  const ClusterSpec& cluster_;
  const WorkloadSpec& workload_;
  const std::vector<SimRequest>& requests_;
  Simulator sim_;
  Network network_;
  Topology topology_;
  RandomStream routing_rng_;
  RandomStream front_end_rng_;  // ClusterSpec::front_end_jitter
  ShardMap shard_map_;  // the same placement for every replica
  std::vector<Replica> replicas_;
  int64_t next_client_request_ = 0;  // closed loop
  std::vector<Nanos> arrival_time_;  // per request: when its client sent it
  std::vector<Nanos> enqueue_time_;  // per request: when it reached its replica's queue

  // Flow: routes between ranks (per replica), alias-free cumulative popularity per layer.
  std::vector<std::vector<std::vector<std::vector<int>>>> routes_;  // [replica][from][to]
  std::vector<std::vector<double>> cumulative_;                     // [layer][expert]
  // Fluid: per layer, P(a token has >= 1 expert on rank v) and expected tokens per (rank, its experts).
  std::vector<std::vector<double>> q_;                              // [layer][rank]
  std::vector<std::vector<double>> mass_;                           // [layer][rank]: routing probability it serves
  std::vector<std::vector<std::vector<double>>> expert_share_;     // [layer][rank] -> popularity of each expert it serves
  std::vector<std::vector<Nanos>> expert_time_memo_;  // [general tokens][layer * workers + rank]; empty: not yet
  // Fluid: where each replica's ranks sit, and per layer the chance a token reaches each host.
  struct FluidLayout {
    std::vector<int> host;           // rank -> host index within the replica
    std::vector<int> ranks_on_host;
    std::vector<std::vector<double>> q_host, hit_host;  // [layer][host]: sum of q over its ranks; P(>= 1 expert there)
    std::vector<double> q_total, hit_total;              // [layer]
  };
  std::vector<FluidLayout> fluid_layout_;
  std::vector<double> port_bandwidth_;  // fluid ports: [(replica*W + rank)*2 + {0 intra, 1 nic}]
  std::vector<double> fluid_port_bytes_;

  // Results.
  SimReport report_;
  std::vector<double> worker_busy_ns_;
  std::vector<double> worker_expert_tokens_;  // token-expert pairs (fluid: expected)
  std::unique_ptr<UtilizationSeries> series_;
  std::vector<double> last_carried_;  // flow: carried bytes per link at the last step end
  Nanos first_arrival_ = -1, last_token_ = 0;
  double layers_run_ = 0, rows_processed_ = 0;
};

absl::Status ServingSimulation::Setup() {
  MOE_RETURN_IF_ERROR(cluster_.Validate(shape_));
  // The coordinator places by measured expert load; here the workload's popularity is that measurement.
  const std::vector<std::vector<double>>& load = popularity_.popularity;
  MOE_ASSIGN_OR_RETURN(shard_map_, PlaceExperts(config_, cluster_.workers, load, cluster_.placement, /*epoch=*/1));
  if (cluster_.expert_slots > 0) {
    for (int64_t l = 0; l < shape_.layers; ++l) {
      std::vector<int> held(static_cast<size_t>(cluster_.workers), 0);
      for (const auto& owners : shard_map_.owners[l]) {
        for (int w : owners) ++held[w];
      }
      for (int w = 0; w < cluster_.workers; ++w) {
        if (held[w] > cluster_.expert_slots) {
          return absl::InvalidArgumentError(absl::StrCat("cluster '", cluster_.name, "': expert_slots: worker ", w, " must hold ",
                                                         held[w], " experts of layer ", l, " but has ", cluster_.expert_slots,
                                                         " slots (more workers, or fewer replicas)"));
        }
      }
    }
  }
  const int W = cluster_.workers, R = cluster_.replicas;
  for (int r = 0; r < R; ++r) {
    Replica rep;
    rep.index = r;
    rep.admission = std::make_unique<BatchAdmission>(cluster_.batch);
    replicas_.push_back(std::move(rep));
  }
  worker_busy_ns_.assign(static_cast<size_t>(W * R), 0);
  worker_expert_tokens_.assign(static_cast<size_t>(W * R), 0.0);

  // Expert popularity each rank serves, per layer (replicas split an expert's tokens evenly).
  expert_share_.assign(static_cast<size_t>(shape_.layers), std::vector<std::vector<double>>(static_cast<size_t>(W)));
  q_.assign(static_cast<size_t>(shape_.layers), std::vector<double>(static_cast<size_t>(W), 0.0));
  mass_ = q_;
  cumulative_.assign(static_cast<size_t>(shape_.layers), {});
  for (int64_t l = 0; l < shape_.layers; ++l) {
    if (!shape_.moe_layer[l]) continue;
    double acc = 0;
    for (int64_t e = 0; e < shape_.num_experts; ++e) {
      const double p = popularity_.popularity[l][e];
      cumulative_[l].push_back(acc += p);
      const auto& owners = shard_map_.owners[l][e];
      for (int v : owners) expert_share_[l][v].push_back(p / static_cast<double>(owners.size()));
    }
    for (int v = 0; v < W; ++v) {
      mass_[l][v] = std::accumulate(expert_share_[l][v].begin(), expert_share_[l][v].end(), 0.0);
      q_[l][v] = HitProbability(mass_[l][v], shape_.num_experts, shape_.top_k);
    }
  }

  if (cluster_.fidelity == Fidelity::kFlow) {
    Placement placement;
    if (cluster_.topology == "json") {
      MOE_RETURN_IF_ERROR(BuildTopologyFromJson(cluster_.topology_json, &topology_));
      for (const std::string& name : cluster_.json_accelerators) {
        const int node = topology_.FindNode(name);
        if (node < 0) return absl::InvalidArgumentError(absl::StrCat("cluster '", cluster_.name, "': accelerators: no node '", name, "'"));
        placement.nodes.push_back(node);
      }
    } else if (cluster_.topology == "loopback") {
      MOE_ASSIGN_OR_RETURN(placement, Loopback(cluster_.total_workers(), cluster_.shape.intra_host_bandwidth,
                                               cluster_.shape.intra_host_latency, &topology_));
    } else if (cluster_.topology == "single_node") {
      MOE_ASSIGN_OR_RETURN(placement, SingleNode(cluster_.shape, &topology_));
    } else if (cluster_.topology == "rail_optimized") {
      MOE_ASSIGN_OR_RETURN(placement, RailOptimized(cluster_.shape, &topology_));
    } else {
      MOE_ASSIGN_OR_RETURN(placement, FatTree(cluster_.shape, &topology_));
    }
    routes_.resize(static_cast<size_t>(R));
    for (int r = 0; r < R; ++r) {
      routes_[r].assign(static_cast<size_t>(W), std::vector<std::vector<int>>(static_cast<size_t>(W)));
      for (int a = 0; a < W; ++a) {
        for (int b = 0; b < W; ++b) {
          if (a == b) continue;
          MOE_ASSIGN_OR_RETURN(routes_[r][a][b], topology_.Route(placement.nodes[r * W + a], placement.nodes[r * W + b]));
        }
      }
    }
    series_ = std::make_unique<UtilizationSeries>(network_.num_links());
    last_carried_.assign(static_cast<size_t>(network_.num_links()), 0.0);
  } else {
    // Fluid: each worker has an intra-host port and a NIC. Loopback and single node: every worker on one host.
    const bool one_host = cluster_.topology == "loopback" || cluster_.topology == "single_node";
    for (int r = 0; r < R; ++r) {
      FluidLayout layout;
      std::map<int, int> host_index;  // global host -> index within the replica
      for (int w = 0; w < W; ++w) {
        const int global = one_host ? 0 : (r * W + w) / cluster_.shape.gpus_per_host;
        auto it = host_index.emplace(global, static_cast<int>(host_index.size())).first;
        layout.host.push_back(it->second);
      }
      layout.ranks_on_host.assign(host_index.size(), 0);
      for (int h : layout.host) ++layout.ranks_on_host[h];
      for (int64_t l = 0; l < shape_.layers; ++l) {
        std::vector<double> q_host(host_index.size(), 0.0), mass_host(host_index.size(), 0.0), hit_host(host_index.size(), 0.0);
        for (int w = 0; w < W; ++w) {
          q_host[layout.host[w]] += q_[l][w];
          mass_host[layout.host[w]] += mass_[l][w];
        }
        for (size_t h = 0; h < hit_host.size(); ++h) hit_host[h] = HitProbability(mass_host[h], shape_.num_experts, shape_.top_k);
        layout.q_total.push_back(std::accumulate(q_host.begin(), q_host.end(), 0.0));
        layout.hit_total.push_back(std::accumulate(hit_host.begin(), hit_host.end(), 0.0));
        layout.q_host.push_back(std::move(q_host));
        layout.hit_host.push_back(std::move(hit_host));
      }
      fluid_layout_.push_back(std::move(layout));
    }
    for (int g = 0; g < W * R; ++g) {
      port_bandwidth_.push_back(cluster_.shape.intra_host_bandwidth);
      port_bandwidth_.push_back(cluster_.shape.nic_bandwidth);
    }
    fluid_port_bytes_.assign(static_cast<size_t>(2 * W * R), 0.0);
    series_ = std::make_unique<UtilizationSeries>(2 * W * R);
  }
  return absl::OkStatus();
}

Nanos ServingSimulation::FrontEndDelay(Nanos mean) {
  if (!cluster_.front_end_jitter || mean == 0) return mean;
  const int stages = cluster_.front_end_jitter_stages;
  double sum = 0;  // of `stages` unit exponentials
  for (int i = 0; i < stages; ++i) sum -= std::log(1 - front_end_rng_.NextUniform());
  return static_cast<Nanos>(sum / stages * static_cast<double>(mean));
}

void ServingSimulation::CloseStream(Replica& r, Nanos cost, Nanos arrival) {
  const Nanos delivered = sim_.now();
  r.close_free = std::max(r.close_free, delivered) + FrontEndDelay(cost);
  FinishStream(delivered, r.close_free, arrival);
}

void ServingSimulation::FinishStream(Nanos delivered, Nanos closed, Nanos arrival) {
  report_.stream_close.Add(closed - delivered);
  report_.end_to_end.Add(closed - arrival);
  ++report_.completed;
  SendNextClientRequest(closed - sim_.now());
}

void ServingSimulation::SendNextClientRequest(Nanos after) {
  if (workload_.concurrency == 0 || next_client_request_ >= static_cast<int64_t>(requests_.size())) return;
  const int64_t next = next_client_request_++;
  sim_.After(after, [this, next] { Arrive(next); });
}

void ServingSimulation::Arrive(int64_t request) {
  if (first_arrival_ < 0) first_arrival_ = sim_.now();
  arrival_time_[request] = sim_.now();
  if (cluster_.request_overhead > 0) {
    Replica& r = replicas_[request % cluster_.replicas];
    r.intake_free = std::max(r.intake_free, sim_.now()) + FrontEndDelay(cluster_.request_overhead);
    sim_.After(r.intake_free - sim_.now(), [this, request] { Enqueue(request); });
  } else {
    Enqueue(request);
  }
}

void ServingSimulation::Enqueue(int64_t request) {
  Replica& r = replicas_[request % cluster_.replicas];
  const SimRequest& req = requests_[request];
  if (req.prompt_tokens > cluster_.batch.max_batch_tokens || static_cast<int>(r.queue.size()) >= cluster_.max_queued) {
    ++report_.rejected;  // the coordinator answers RESOURCE_EXHAUSTED
    SendNextClientRequest();
    return;
  }
  enqueue_time_[request] = sim_.now();
  r.queue.push_back(request);
  MaybeStartStep(r);
}

void ServingSimulation::MaybeStartStep(Replica& r) {
  if (r.stepping) return;
  r.stepping = true;
  sim_.After(std::max<Nanos>(0, r.admits_at - sim_.now()), [this, &r] { BeginStep(r); });
}

void ServingSimulation::BeginStep(Replica& r) {
  std::vector<int> per_rank(static_cast<size_t>(cluster_.workers), 0);
  for (const auto& [id, s] : r.running) ++per_rank[s.rank];
  r.admission->BeginStep(std::move(per_rank));
  while (!r.queue.empty()) {
    const SimRequest& req = requests_[r.queue.front()];
    const std::optional<int> rank = r.admission->Admit(req.prompt_tokens, HomeRank(req.task));
    if (!rank) break;
    Sequence s;
    s.request = r.queue.front();
    s.task = req.task;
    s.rank = *rank;
    s.prompt = req.prompt_tokens;
    s.output = req.output_tokens;
    s.arrival = arrival_time_[s.request];
    s.enqueued = enqueue_time_[s.request];
    r.running.emplace(static_cast<uint64_t>(s.request), s);
    r.queue.pop_front();
  }
  if (r.running.empty()) {
    r.stepping = false;
    return;
  }
  r.step_start = sim_.now();
  ++report_.steps;
  std::vector<WorkerBatch> batches = ComposeBatches(r);
  if (const int64_t prefill_rows = PrefillRowsIn(batches); prefill_rows > 0) {
    ++report_.prefill_steps;
    report_.prefill_rows += prefill_rows;
  }
  if (cluster_.fidelity == Fidelity::kFluid) {
    const Nanos t = FluidStepTime(r, batches);
    sim_.After(t, [this, &r, batches = std::move(batches)] { EndStep(r, batches); });
  } else {
    RunFlowStep(r, std::move(batches));
  }
}


std::vector<WorkerBatch> ServingSimulation::ComposeBatches(Replica& r) const {
  std::vector<WorkerBatch> batches(static_cast<size_t>(cluster_.workers));
  for (const auto& [id, s] : r.running) {
    WorkerBatch& b = batches[s.rank];
    const double rate = RunRate(s.task);
    // The first step prefills the prompt (and samples the first token); later steps feed the last token.
    const int64_t rows = s.started ? 1 : s.prompt;
    const double context = static_cast<double>(s.prompt + s.generated);
    const double attended = s.started ? context : static_cast<double>(s.prompt) * static_cast<double>(s.prompt + 1) / 2.0;
    ++b.sequences;
    b.rows += rows;
    b.tokens += rate * static_cast<double>(rows);
    b.attended += rate * attended;
    b.kv_positions += rate * context;
    if (TaskAtHome(s.task)) {
      auto it = std::find_if(b.home.begin(), b.home.end(), [&](const auto& h) { return h.first == s.task; });
      if (it == b.home.end()) b.home.emplace_back(s.task, rate * static_cast<double>(rows));
      else it->second += rate * static_cast<double>(rows);
    } else {
      b.general_tokens += rate * static_cast<double>(rows);
    }
  }
  return batches;
}

const std::vector<Nanos>& ServingSimulation::FluidExpertTimes(double general_tokens) {
  const size_t tokens = static_cast<size_t>(general_tokens + 0.5);
  if (tokens >= expert_time_memo_.size()) expert_time_memo_.resize(tokens + 1);
  std::vector<Nanos>& times = expert_time_memo_[tokens];
  if (!times.empty()) return times;
  const int W = cluster_.workers;
  times.assign(static_cast<size_t>(shape_.layers * W), 0);
  for (int64_t l = 0; l < shape_.layers; ++l) {
    for (int v = 0; v < W; ++v) {
      for (double share : expert_share_[l][v]) {
        times[l * W + v] += FfnTime(static_cast<double>(tokens) * static_cast<double>(shape_.top_k) * share, shape_.expert_ffn);
      }
    }
  }
  return times;
}

Nanos ServingSimulation::FluidStepTime(const Replica& r, const std::vector<WorkerBatch>& batches) {
  const int W = cluster_.workers;
  const double k = static_cast<double>(shape_.top_k);
  const bool hierarchical = cluster_.all_to_all == "hierarchical";
  const FluidLayout& layout = fluid_layout_[r.index];
  const std::vector<int>& host = layout.host;
  const std::vector<int>& ranks_on_host = layout.ranks_on_host;
  const int num_hosts = static_cast<int>(ranks_on_host.size());
  double G = 0;
  std::vector<double> g_host(static_cast<size_t>(num_hosts), 0.0);
  for (int w = 0; w < W; ++w) {
    G += batches[w].general_tokens;
    g_host[host[w]] += batches[w].general_tokens;
  }
  int attending = 0;  // workers with rows
  for (const WorkerBatch& b : batches) attending += b.tokens > 0;
  const double attention_core_share = cluster_.CoreShare(attending);
  const double head_core_share = cluster_.CoreShare(WorkersWithSequences(batches));
  std::vector<Nanos> attention(static_cast<size_t>(W)), dense_ffn(static_cast<size_t>(W)), lm_head(static_cast<size_t>(W));
  for (int w = 0; w < W; ++w) {
    attention[w] = OnShare(AttentionTime(batches[w].tokens, batches[w].attended, batches[w].kv_positions), attention_core_share);
    dense_ffn[w] = OnShare(FfnTime(batches[w].tokens, shape_.dense_ffn), attention_core_share);
    lm_head[w] = OnShare(LmHeadTime(static_cast<double>(batches[w].sequences)), head_core_share);
  }
  std::vector<double> port_bytes(static_cast<size_t>(2 * W), 0.0);  // this step, per port: max(tx, rx)
  std::vector<double> busy(static_cast<size_t>(W), 0.0);
  double step = 0, sent = 0;

  // One exchange (dispatch or combine) with `record` bytes per (token, destination) and `header` bytes
  // per message: the busiest port's time. Adds to port_bytes and `sent`.
  auto exchange = [&](int layer, double record, double header) -> double {
    const std::vector<double>& q = q_[layer];
    const std::vector<double>& q_host = layout.q_host[layer];
    const std::vector<double>& hit_host = layout.hit_host[layer];
    const double Q = layout.q_total[layer], hit_total = layout.hit_total[layer];
    double slowest = 0;
    for (int w = 0; w < W; ++w) {
      const int h = host[w];
      const double local_peers = ranks_on_host[h] - 1, remote_peers = W - 1 - local_peers;
      const double g = batches[w].general_tokens;
      double send_intra = g * record * (q_host[h] - q[w]) + header * local_peers;
      double recv_intra = q[w] * record * (g_host[h] - g) + header * local_peers;
      double send_inter = 0, recv_inter = 0, forward = 0;
      if (remote_peers > 0) {
        if (!hierarchical) {
          send_inter = g * record * (Q - q_host[h]) + header * remote_peers;
          recv_inter = q[w] * record * (G - g_host[h]) + header * remote_peers;
        } else {
          // One copy per destination host, to the same local rank there, which forwards it inside.
          const double to_hosts = hit_total - hit_host[h], into_host = hit_host[h];
          send_inter = g * record * to_hosts + header * static_cast<double>(num_hosts - 1);
          recv_inter = into_host * record * (G - g_host[h]) / ranks_on_host[h] + header * static_cast<double>(num_hosts - 1);
          forward = into_host > 0 ? recv_inter * (q_host[h] / into_host) : 0;  // fanned out to the host's ranks
        }
      }
      const double intra = std::max(send_intra + forward, recv_intra + forward);
      const double inter = std::max(send_inter, recv_inter);
      double t = 0;
      if (local_peers > 0) t = std::max(t, intra / port_bandwidth_[0] * 1e9 + static_cast<double>(cluster_.shape.intra_host_latency));
      if (remote_peers > 0) {
        const double nic = inter / port_bandwidth_[1] * 1e9 + static_cast<double>(cluster_.shape.nic_latency);
        t = hierarchical ? std::max(t, nic + forward / port_bandwidth_[0] * 1e9) : std::max(t, nic);
      }
      slowest = std::max(slowest, t);
      port_bytes[2 * w] += intra;
      port_bytes[2 * w + 1] += inter;
      sent += send_intra + send_inter + forward;
    }
    return slowest + static_cast<double>(cluster_.collective_overhead);
  };

  // What does not depend on the layer: attention, the dense or shared FFN, home task maps' experts.
  double attention_phase = 0, dense_phase = 0;
  std::vector<double> dense(static_cast<size_t>(W));
  std::vector<Nanos> local_experts(static_cast<size_t>(W));  // on the whole device
  std::vector<double> home_pairs(static_cast<size_t>(W), 0);
  for (int w = 0; w < W; ++w) {
    attention_phase = std::max(attention_phase, static_cast<double>(attention[w]));
    dense[w] = static_cast<double>(attention[w] + dense_ffn[w]);
    dense_phase = std::max(dense_phase, dense[w]);
    local_experts[w] = FfnTime(batches[w].tokens, shape_.shared_expert_ffn);
    for (const auto& [task, rows] : batches[w].home) {
      const int m = MergedExperts(task);
      const double pairs = rows * ExpertsPerRow(task);
      local_experts[w] += m * FfnTime(pairs / m, shape_.expert_ffn);
      home_pairs[w] += pairs;
    }
  }
  const std::vector<Nanos>& expert_times = FluidExpertTimes(G);
  std::vector<Nanos> layer_experts(static_cast<size_t>(W));  // one layer's, per worker, on the whole device
  for (int64_t l = 0; l < shape_.layers; ++l) {
    const int layer = static_cast<int>(l);
    if (!shape_.moe_layer[l]) {
      for (int w = 0; w < W; ++w) busy[w] += dense[w];
      step += dense_phase;
      continue;
    }
    const double dispatch = W > 1 ? exchange(layer, shape_.DispatchRecordBytes(), ModelShape::kMessageHeaderBytes) : 0;
    int computing = 0;
    for (int w = 0; w < W; ++w) {
      layer_experts[w] = expert_times[l * W + w] + local_experts[w];
      computing += layer_experts[w] > 0;
    }
    const double expert_core_share = cluster_.CoreShare(computing);
    double experts = 0;
    for (int w = 0; w < W; ++w) {
      const double t = static_cast<double>(OnShare(layer_experts[w], expert_core_share));
      worker_expert_tokens_[r.index * W + w] += home_pairs[w] + G * k * mass_[l][w];
      busy[w] += static_cast<double>(attention[w]) + t;
      experts = std::max(experts, t);
    }
    const double combine = W > 1 ? exchange(layer, shape_.CombineRecordBytes(), 0) : 0;
    step += attention_phase + dispatch + experts + combine;
  }
  double head = 0;
  for (int w = 0; w < W; ++w) {
    head = std::max(head, static_cast<double>(lm_head[w]));
    busy[w] += static_cast<double>(lm_head[w]);
    worker_busy_ns_[r.index * W + w] += busy[w];
  }
  const Nanos total = static_cast<Nanos>(std::ceil(step + head)) + StepOverheadOf(cluster_, batches);
  report_.all2all_bytes += sent;
  series_->Add(sim_.now(), sim_.now() + total, r.index * 2 * W, port_bytes);
  for (int p = 0; p < 2 * W; ++p) fluid_port_bytes_[r.index * 2 * W + p] += port_bytes[p];
  return total;
}

void ServingSimulation::RunFlowStep(Replica& r, std::vector<WorkerBatch> batches) {
  const int W = cluster_.workers;
  const int64_t k = shape_.top_k, E = shape_.num_experts;
  r.flow = std::make_unique<FlowStep>();
  FlowStep* step = r.flow.get();
  step->batches = std::move(batches);
  step->workers_left = W;
  step->layers.resize(static_cast<size_t>(shape_.layers));
  // Merged experts of task maps get ids past the checkpoint's: task t's start at offset[t].
  std::vector<int64_t> merged_offset(workload_.tasks.size(), 0);
  for (size_t t = 1; t < workload_.tasks.size(); ++t) merged_offset[t] = merged_offset[t - 1] + MergedExperts(static_cast<int>(t - 1));

  // Draw every row's path and experts for every layer.
  for (int64_t l = 0; l < shape_.layers; ++l) {
    FlowStep::Layer& L = step->layers[l];
    L.rows.assign(static_cast<size_t>(W), 0);
    L.attended.assign(static_cast<size_t>(W), 0);
    L.kv.assign(static_cast<size_t>(W), 0);
    L.records.assign(static_cast<size_t>(W), std::vector<int64_t>(static_cast<size_t>(W), 0));
    L.expert_rows.assign(static_cast<size_t>(W), {});
    L.dispatch_pending.assign(static_cast<size_t>(W), W - 1);
    L.combine_pending.assign(static_cast<size_t>(W), W - 1);
    L.attention_done.assign(static_cast<size_t>(W), false);
    L.experts_done.assign(static_cast<size_t>(W), false);
  }
  std::vector<int64_t> picked(static_cast<size_t>(k));
  std::vector<bool> to_rank(static_cast<size_t>(W));
  for (const auto& [id, s] : r.running) {
    const double rate = RunRate(s.task);
    const int64_t rows = s.started ? 1 : s.prompt;
    const int64_t first_position = s.started ? s.prompt + s.generated - 1 : 0;
    const bool home = TaskAtHome(s.task);
    const bool spread_map = s.task >= 0 && !home && workload_.tasks[s.task].kept_fraction < 1;
    for (int64_t l = 0; l < shape_.layers; ++l) {
      FlowStep::Layer& L = step->layers[l];
      bool any = false;
      for (int64_t row = 0; row < rows; ++row) {
        if (rate < 1 && routing_rng_.NextUniform() >= rate) continue;  // Dr.LLM skips this layer for this token
        any = true;
        L.rows[s.rank] += 1;
        L.attended[s.rank] += static_cast<double>(first_position + row + 1);
        if (!shape_.moe_layer[l]) continue;
        const int64_t pool = home || spread_map ? MergedExperts(s.task) : E;
        // k distinct experts (fewer when the pool is smaller, or when the task's slots merge:
        // ExpertsPerRow, drawn to a whole number with that mean), in proportion to popularity.
        int64_t want = std::min(k, pool);
        if (const double per_row = ExpertsPerRow(s.task); per_row < static_cast<double>(k)) {
          const double whole = std::floor(per_row);
          want = std::clamp<int64_t>(static_cast<int64_t>(whole) + (routing_rng_.NextUniform() < per_row - whole ? 1 : 0), 1, want);
        }
        for (int64_t j = 0; j < want; ++j) {
          int64_t e;
          do {
            if (home || spread_map) {
              e = static_cast<int64_t>(routing_rng_.NextU64() % static_cast<uint64_t>(pool));
            } else {
              const auto& c = cumulative_[l];
              e = std::upper_bound(c.begin(), c.end(), routing_rng_.NextUniform() * c.back()) - c.begin();
              e = std::min<int64_t>(e, E - 1);
            }
          } while (std::find(picked.begin(), picked.begin() + j, e) != picked.begin() + j);
          picked[j] = e;
        }
        std::fill(to_rank.begin(), to_rank.end(), false);
        for (int64_t j = 0; j < want; ++j) {
          int owner;
          int64_t expert_id = picked[j];
          if (home) {
            owner = s.rank;
            expert_id = E + merged_offset[s.task] + picked[j];
          } else if (spread_map) {
            expert_id = E + merged_offset[s.task] + picked[j];
            owner = static_cast<int>(expert_id % W);
          } else {
            owner = shard_map_.OwnerFor(l, picked[j], row, s.rank);
          }
          L.expert_rows[owner][expert_id]++;
          to_rank[owner] = true;
        }
        for (int v = 0; v < W; ++v) {
          if (to_rank[v] && v != s.rank) L.records[s.rank][v]++;
        }
      }
      if (any) L.kv[s.rank] += static_cast<double>(s.prompt + s.generated);
    }
  }
  step->head_core_share = cluster_.CoreShare(WorkersWithSequences(step->batches));
  for (FlowStep::Layer& L : step->layers) {
    int attending = 0, computing = 0;
    for (int w = 0; w < W; ++w) {
      attending += L.rows[w] > 0;
      computing += !L.expert_rows[w].empty() || (shape_.shared_expert_ffn > 0 && L.rows[w] > 0);
    }
    L.attention_core_share = cluster_.CoreShare(attending);
    L.expert_core_share = cluster_.CoreShare(computing);
  }

  // The event chain. Each phase of worker w in layer l starts when its inputs are there.
  Replica* replica = &r;
  const int ri = r.index;
  const Nanos coll = cluster_.collective_overhead;
  const double dispatch_record = shape_.DispatchRecordBytes(), combine_record = shape_.CombineRecordBytes();

  step->start_layer = [=, this](int w, int64_t l) {
    if (l == shape_.layers) {  // this worker's last layer is done: its LM head, then the step ends with the last worker
      const Nanos head = OnShare(LmHeadTime(static_cast<double>(step->batches[w].sequences)), step->head_core_share);
      worker_busy_ns_[ri * W + w] += static_cast<double>(head);
      sim_.After(head, [=, this] {
        if (--step->workers_left == 0) {
          sim_.After(StepOverheadOf(cluster_, step->batches), [=, this] { EndStep(*replica, step->batches); });
        }
      });
      return;
    }
    FlowStep::Layer& L = step->layers[l];
    Nanos attention = AttentionTime(L.rows[w], L.attended[w], L.kv[w]);
    if (!shape_.moe_layer[l]) attention += FfnTime(L.rows[w], shape_.dense_ffn);
    attention = OnShare(attention, L.attention_core_share);
    worker_busy_ns_[ri * W + w] += static_cast<double>(attention);
    sim_.After(attention, [=, this] {
      if (!shape_.moe_layer[l]) {
        step->start_layer(w, l + 1);
        return;
      }
      sim_.After(W > 1 ? coll : 0, [=, this] {
        // Set only now: the experts start once, either here or on the last inbound message.
        step->layers[l].attention_done[w] = true;
        for (int v = 0; v < W; ++v) {
          if (v == w) continue;
          const double bytes = ModelShape::kMessageHeaderBytes + static_cast<double>(step->layers[l].records[w][v]) * dispatch_record;
          report_.all2all_bytes += bytes;
          network_.StartFlow(routes_[ri][w][v], bytes, [=] {
            if (--step->layers[l].dispatch_pending[v] == 0 && step->layers[l].attention_done[v]) step->experts_ready(v, l);
          }).IgnoreError();  // routes were resolved in Setup, bytes >= 0
        }
        if (step->layers[l].dispatch_pending[w] == 0) step->experts_ready(w, l);
      });
    });
  };
  step->experts_ready = [=, this](int v, int64_t l) {
    FlowStep::Layer& L = step->layers[l];
    Nanos t = FfnTime(L.rows[v], shape_.shared_expert_ffn);
    for (const auto& [expert, rows] : L.expert_rows[v]) {
      t += FfnTime(static_cast<double>(rows), shape_.expert_ffn);
      worker_expert_tokens_[ri * W + v] += rows;
    }
    t = OnShare(t, L.expert_core_share);
    worker_busy_ns_[ri * W + v] += static_cast<double>(t);
    sim_.After(t + (W > 1 ? coll : 0), [=, this] {
      step->layers[l].experts_done[v] = true;
      for (int w = 0; w < W; ++w) {
        if (w == v) continue;
        const double bytes = static_cast<double>(step->layers[l].records[w][v]) * combine_record;
        report_.all2all_bytes += bytes;
        network_.StartFlow(routes_[ri][v][w], bytes, [=] {
          if (--step->layers[l].combine_pending[w] == 0 && step->layers[l].experts_done[w]) step->layer_done(w, l);
        }).IgnoreError();
      }
      if (step->layers[l].combine_pending[v] == 0) step->layer_done(v, l);
    });
  };
  step->layer_done = [=](int w, int64_t l) { step->start_layer(w, l + 1); };
  for (int w = 0; w < W; ++w) step->start_layer(w, 0);
}

void ServingSimulation::EndStep(Replica& r, std::vector<WorkerBatch> batches) {
  const Nanos now = sim_.now();
  (PrefillRowsIn(batches) > 0 ? report_.prefill_step_s : report_.decode_step_s) += static_cast<double>(now - r.step_start) * 1e-9;
  for (const WorkerBatch& b : batches) {
    rows_processed_ += static_cast<double>(b.rows);
    layers_run_ += b.tokens * static_cast<double>(shape_.layers);
  }
  if (cluster_.fidelity == Fidelity::kFlow) {
    std::vector<double> delta(static_cast<size_t>(network_.num_links()));
    for (int l = 0; l < network_.num_links(); ++l) {
      delta[l] = network_.carried_bytes(l) - last_carried_[l];
      last_carried_[l] = network_.carried_bytes(l);
    }
    series_->Add(r.step_start, now, 0, delta);
    r.flow.reset();
  }
  const int64_t sequences = SequencesIn(batches);
  const Nanos mean_delivery = cluster_.TokenDelivery(sequences);
  r.admits_at = now + cluster_.StepGap(sequences);
  std::vector<std::pair<Nanos, Nanos>> finished;  // (last token at the client, the request's arrival)
  for (auto it = r.running.begin(); it != r.running.end();) {
    Sequence& s = it->second;
    const Nanos delivered = std::max(s.last_token, now + FrontEndDelay(mean_delivery));  // at the client
    s.started = true;
    ++s.generated;
    ++report_.tokens;
    if (s.generated == 1) {
      report_.ttft.Add(delivered - s.arrival);
      report_.coordinator_ttft.Add(now - s.enqueued);
    } else {
      report_.inter_token.Add(delivered - s.last_token);
    }
    s.last_token = delivered;
    last_token_ = std::max(last_token_, delivered);
    if (s.generated < s.output) {
      ++it;
      continue;
    }
    finished.emplace_back(delivered, s.arrival);
    it = r.running.erase(it);
  }
  // Each finished stream closes after its last token reaches its client (stream_close_curve), in the
  // order the last tokens arrive (without a close cost, at once: the clients' next requests in that order).
  std::stable_sort(finished.begin(), finished.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  const Nanos close_cost = cluster_.StreamClose(sequences);
  for (const auto& [delivered, arrival] : finished) {
    if (close_cost > 0) {
      sim_.After(delivered - now, [this, &r, close_cost, arrival] { CloseStream(r, close_cost, arrival); });
    } else {
      FinishStream(delivered, delivered, arrival);
    }
  }
  r.stepping = false;
  if (!r.running.empty() || !r.queue.empty()) MaybeStartStep(r);
}

absl::StatusOr<SimReport> ServingSimulation::Run() {
  MOE_RETURN_IF_ERROR(Setup());
  report_.requests = static_cast<int64_t>(requests_.size());
  arrival_time_.assign(requests_.size(), 0);
  enqueue_time_.assign(requests_.size(), 0);
  for (int c = 0; c < workload_.concurrency; ++c) SendNextClientRequest();  // closed loop: every client starts
  // Open loop: arrivals are chained (each schedules the next), so the event queue holds one at a time.
  std::function<void(int64_t)> arrive = [this, &arrive](int64_t i) {
    Arrive(i);
    if (i + 1 < static_cast<int64_t>(requests_.size())) sim_.At(requests_[i + 1].arrival, [&arrive, i] { arrive(i + 1); });
  };
  if (workload_.concurrency == 0 && !requests_.empty()) sim_.At(requests_[0].arrival, [&arrive] { arrive(0); });
  sim_.Run();
  return Finish();
}

SimReport ServingSimulation::Finish() {
  SimReport& rep = report_;
  rep.events = sim_.events_run();
  const Nanos end = std::max<Nanos>(last_token_, 1);
  rep.makespan_s = static_cast<double>(end - std::max<Nanos>(first_arrival_, 0)) * 1e-9;
  if (rep.makespan_s > 0) {
    rep.tokens_per_s = static_cast<double>(rep.tokens) / rep.makespan_s;
    rep.requests_per_s = static_cast<double>(rep.completed) / rep.makespan_s;
  }
  rep.layers_per_token = rows_processed_ > 0 ? layers_run_ / rows_processed_ : 0;
  std::vector<double> bandwidth;
  if (cluster_.fidelity == Fidelity::kFlow) {
    for (int l = 0; l < network_.num_links(); ++l) {
      const LinkSpec& spec = network_.link(l);
      bandwidth.push_back(spec.bandwidth);
      rep.links.push_back({spec.name, network_.carried_bytes(l), network_.carried_bytes(l) / (spec.bandwidth * rep.makespan_s)});
    }
  } else {
    for (int g = 0; g < cluster_.total_workers(); ++g) {
      for (int port = 0; port < 2; ++port) {
        const double bytes = fluid_port_bytes_[2 * g + port];
        const double bw = port_bandwidth_[2 * g + port];
        bandwidth.push_back(bw);
        rep.links.push_back({absl::StrCat("r", g / cluster_.workers, ".w", g % cluster_.workers, port == 0 ? ".intra" : ".nic"),
                             bytes, bytes / (bw * rep.makespan_s)});
      }
    }
  }
  series_->Finish(end, bandwidth, &rep);
  for (int g = 0; g < cluster_.total_workers(); ++g) {
    rep.workers.push_back({g / cluster_.workers, g % cluster_.workers, std::llround(worker_expert_tokens_[g]),
                           worker_busy_ns_[g] * 1e-9 / std::max(rep.makespan_s, 1e-12)});
  }
  return rep;
}

}  // namespace

absl::StatusOr<SimReport> SimulateServing(const ModelConfig& config, const ModelShape& shape,
                                          const ExpertPopularity& popularity, const ClusterSpec& cluster,
                                          const WorkloadSpec& workload, const std::vector<SimRequest>& requests) {
  if (static_cast<int64_t>(popularity.popularity.size()) != shape.layers) {
    return absl::InvalidArgumentError("expert popularity: one row per layer");
  }
  for (const SimRequest& r : requests) {
    if (r.task >= static_cast<int>(workload.tasks.size())) return absl::InvalidArgumentError("request names an unknown task");
  }
  for (const TaskProfile& t : workload.tasks) {
    if (t.experts_per_token != 0 && !(t.experts_per_token >= 1 && t.experts_per_token <= static_cast<double>(shape.top_k))) {
      return absl::InvalidArgumentError(absl::StrCat("task '", t.name, "': experts_per_token ", t.experts_per_token,
                                                     " is outside [1, top_k ", shape.top_k, "]"));
    }
  }
  ServingSimulation simulation(config, shape, popularity, cluster, workload, requests);
  return simulation.Run();
}

}  // namespace moe::sim
