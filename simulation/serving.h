// The serving simulation: a cluster of replicas, each an expert-parallel group of workers run by one
// coordinator, serving a request stream step by step as the live cluster does: the coordinator's own
// admission policy (coordinator/batching.h) and expert placement (coordinator/placement.h), driven by
// the simulator's clock; every worker runs attention for its own sequences and the experts it owns;
// tokens cross the network to their experts' owners and back each MoE layer.
//
// Two fidelities share everything but the step's inner timing:
//   flow  - every token's experts are drawn, every layer is a chain of events per worker (attention,
//           dispatch flows on the topology under max-min fair sharing, expert compute, combine flows);
//           for validation and small clusters.
//   fluid - expected routing, and a layer's exchange takes the time its busiest endpoint (a worker's
//           NVLink/loopback port or its NIC) needs; one event per step. For planning at scale: it ignores
//           congestion inside the fabric (non-blocking switches), the spread of small-batch routing, and
//           the overlap of phases under skew (early workers' combine replies and next-layer dispatch
//           competing for the busy worker's ports), so it is optimistic where routing is skewed: flow
//           is ~25% slower on a Zipf-0.8 prefill (serving_test.cc).
#ifndef MOE_SIMULATION_SERVING_H_
#define MOE_SIMULATION_SERVING_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/model_config.h"
#include "coordinator/batching.h"
#include "coordinator/placement.h"
#include "simulation/compute.h"
#include "simulation/presets.h"
#include "simulation/workload.h"

namespace moe::sim {

enum class Fidelity { kFlow, kFluid };
// "fidelity": "auto" picks flow up to this many workers in all (flow costs tens of thousands of events
// per step at 8 workers), fluid beyond.
inline constexpr int kAutoFlowWorkers = 4;

struct ClusterSpec {
  std::string name = "cluster";
  DeviceProfile device;
  // "loopback" (this machine: shape.intra_host_bandwidth/latency is each worker's port), "single_node",
  // "rail_optimized", "fat_tree" (presets.h, with `shape`), or "json" (topology_json; flow only).
  std::string topology = "loopback";
  ClusterShape shape;
  std::string topology_json;
  std::vector<std::string> json_accelerators;  // topology "json": the nodes the workers run on, in rank order
  std::string all_to_all = "direct";           // or "hierarchical" (DeepEP's internode scheme)
  int workers = 1;   // per replica: the expert-parallel size
  int replicas = 1;  // independent copies of the model behind one load balancer (round-robin)
  Nanos step_overhead = 0;        // fixed cost of one engine step (scheduling, RPCs)
  Nanos sequence_overhead = 0;    // cost of each sequence in a step (sampling, its share of the RPCs)
  // (sequences in the step, ns): when given, the step's fixed and per-sequence cost as a measured curve
  // (Interpolate), in place of step_overhead + sequence_overhead x sequences.
  std::vector<std::pair<int64_t, double>> step_overhead_curve;
  // (sequences in the step, ns): the coordinator's own work between a step's results and the next
  // step's admission (handing out the tokens, admitting, building the workers' requests). Part of the
  // step's period, but a request that reaches the queue during it joins the next step. Empty: none.
  std::vector<std::pair<int64_t, double>> step_gap_curve;
  // Prefill's software cost, which the matmul roofline does not see (per-row norms, attention
  // bookkeeping and packing for the exchange; setting up new sequences): each step that prefills pays
  // prefill_step_overhead once, plus prefill_row_overhead for each row beyond one per sequence (a new
  // sequence's prompt tokens after the first).
  Nanos prefill_step_overhead = 0;
  Nanos prefill_row_overhead = 0;
  // A request's trip from its client into the coordinator's queue (call set-up); TTFT and end-to-end
  // latency count from the client's send. The coordinator takes requests in one at a time: requests
  // that arrive together queue for it, each paying this in turn.
  Nanos request_overhead = 0;
  // (sequences in the step, ns): the front end's way back. Each token reaches its client this long
  // after the step that produced it, in order within its stream; the curve's growth with the streams in
  // flight is the front end's load (every running stream's handler and client wake, write and read once
  // per step). Latency only: the next step does not wait for it; a closed-loop client's next request
  // waits for its last token and its stream's close (below). Empty: tokens arrive with the step.
  std::vector<std::pair<int64_t, double>> token_delivery_curve;
  // (sequences in the step, ns): a finished stream's end. After a request's last token reaches its
  // client, the front end closes the stream (the status); a replica's streams close one at a time, each
  // taking this long (the answers of a wave of closed-loop clients end together and their closes queue),
  // and a closed-loop client sends its next request when its stream has closed. Empty: at once.
  std::vector<std::pair<int64_t, double>> stream_close_curve;
  // The intake's, the delivery's and the close's delays: random draws of those means (threads sharing a
  // host's cores run when the scheduler lets them; without the jitter, closed-loop clients march in
  // lockstep), or, when false, exactly the means. Each draw is the sum of front_end_jitter_stages
  // exponential stages of an equal share of the mean (Erlang): 1 is an exponential draw; 2, the default,
  // as if a delay passed two threads' wake-ups (coefficient of variation 0.71), which on this machine's
  // recorded validations predicted the live TTFT percentiles without the exponential's bias (README
  // "Calibration and validation").
  bool front_end_jitter = false;
  int front_end_jitter_stages = 2;
  Nanos collective_overhead = 0;  // software cost of one all-to-all on every worker (dispatch or combine)
  // CPU workers sharing a host: the cores one replica's workers share, each worker computing on one
  // core (the device profile is one core's). A phase (a layer's attention, its experts, the LM head)
  // that keeps n > host_cores of a replica's workers busy gives each of them host_cores / n of its
  // device; workers without rows in that phase take none. 0: every worker has a device of its own.
  int host_cores = 0;
  int max_queued = 256;           // per replica: waiting requests beyond this are refused
  int expert_slots = 0;           // experts of one layer a worker's memory holds; 0: no limit
  BatchLimits batch;
  PlacementOptions placement;
  double device_hour_cost = 1;    // for moe-plan's ranking
  Fidelity fidelity = Fidelity::kFluid;

  int total_workers() const { return workers * replicas; }
  // The serial software cost of a replica's step over `sequences` sequences that prefills
  // `prefill_rows` rows beyond one per sequence, after its last layer.
  Nanos StepOverhead(int64_t sequences, int64_t prefill_rows) const {
    const Nanos per_step = step_overhead_curve.empty()
                               ? step_overhead + sequence_overhead * sequences
                               : static_cast<Nanos>(Interpolate(step_overhead_curve, sequences));
    return per_step + (prefill_rows > 0 ? prefill_step_overhead + prefill_row_overhead * prefill_rows : 0);
  }
  // The coordinator's work after a step over `sequences` sequences before it admits the next (step_gap_curve).
  Nanos StepGap(int64_t sequences) const { return static_cast<Nanos>(Interpolate(step_gap_curve, sequences)); }
  // The mean delay before a token produced by a step over `sequences` sequences reaches its client.
  Nanos TokenDelivery(int64_t sequences) const { return static_cast<Nanos>(Interpolate(token_delivery_curve, sequences)); }
  // The time one stream's close takes after a step over `sequences` sequences (stream_close_curve).
  Nanos StreamClose(int64_t sequences) const { return static_cast<Nanos>(Interpolate(stream_close_curve, sequences)); }
  // The share of its device each of `busy_workers` workers computing at once gets (host_cores).
  double CoreShare(int busy_workers) const {
    return host_cores > 0 && busy_workers > host_cores ? static_cast<double>(host_cores) / busy_workers : 1.0;
  }
  // From a JSON object (see README "Simulator"); INVALID_ARGUMENT naming the field. `base_dir` resolves
  // a relative "topology_file".
  static absl::StatusOr<ClusterSpec> FromJson(const std::string& json_text, const std::string& source,
                                              const std::string& base_dir);
  // FromJson on a file; a relative topology_file is taken from the file's directory.
  static absl::StatusOr<ClusterSpec> FromFile(const std::string& path);
  absl::Status Validate(const ModelShape& model) const;
};

// Latency percentiles from a log-bucketed histogram (1% relative resolution).
class LatencyHistogram {
 public:
  void Add(Nanos value);
  int64_t count() const { return count_; }
  double Percentile(double q) const;  // seconds; 0 when empty
  double MeanSeconds() const { return count_ ? sum_ns_ / static_cast<double>(count_) * 1e-9 : 0; }
  // (seconds, cumulative fraction) at every non-empty bucket, for a CDF plot.
  std::vector<std::pair<double, double>> Cdf() const;

 private:
  std::vector<int64_t> buckets_;
  int64_t count_ = 0;
  double sum_ns_ = 0;
};

struct LinkReport {
  std::string name;
  double bytes = 0;
  double utilization = 0;  // bytes / (bandwidth x makespan)
};

struct WorkerReport {
  int replica = 0, rank = 0;
  int64_t expert_tokens = 0;  // token-expert pairs computed
  double busy_fraction = 0;   // compute time / makespan
};

struct SimReport {
  int64_t requests = 0, completed = 0, rejected = 0;
  int64_t tokens = 0;
  double makespan_s = 0;  // first arrival to last token
  double tokens_per_s = 0, requests_per_s = 0;
  // As the clients see them: from the send to the first token's delivery, between deliveries, and from
  // the send to the stream's close (stream_close_curve).
  LatencyHistogram ttft, inter_token, end_to_end;
  LatencyHistogram stream_close;  // from a finished request's last token at its client to its stream's close
  // The coordinator's own TTFT: from the request reaching its queue to the step that produced the first
  // token (what the live coordinator's moe_time_to_first_token_seconds measures).
  LatencyHistogram coordinator_ttft;
  double all2all_bytes = 0;      // bytes that left a worker, all layers, dispatch and combine
  double layers_per_token = 0;   // layers run per token processed
  int64_t steps = 0;
  int64_t prefill_steps = 0, prefill_rows = 0;  // steps with prompt rows; their rows beyond one per sequence
  double prefill_step_s = 0, decode_step_s = 0;  // the time those steps and the others took, in all (gaps not counted)
  uint64_t events = 0;
  std::vector<LinkReport> links;      // flow: every link; fluid: each worker's ports
  std::vector<WorkerReport> workers;
  // Link utilization over time: interval length, and per interval the busiest link's and the mean
  // utilization over all links.
  double series_interval_s = 0;
  std::vector<double> busiest_link_series, mean_link_series;
};

// Runs the request stream to completion (every admitted request finishes). INVALID_ARGUMENT for an
// inconsistent cluster (too few accelerators in the topology, more experts than slots, ...).
absl::StatusOr<SimReport> SimulateServing(const ModelConfig& config, const ModelShape& shape,
                                          const ExpertPopularity& popularity, const ClusterSpec& cluster,
                                          const WorkloadSpec& workload, const std::vector<SimRequest>& requests);

}  // namespace moe::sim

#endif  // MOE_SIMULATION_SERVING_H_
