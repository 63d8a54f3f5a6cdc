// Calibration: what this machine's parts cost, measured with the serving stack's own code, so the
// simulator can predict the live local cluster (moe-calibrate writes the cluster files; moe-bench-sim-live
// compares the predictions with the cluster under load).
//
// Measured, each as the median of repeated runs:
//   - the matmul kernel the experts and projections run (kernels/kernels.h, one thread, the served weight
//     type) at the model's expert shape, by rows in the batch: the device's peak and efficiency curve;
//   - each exchange backend among N ranks: an all-to-all of one dispatch record per peer (the latency
//     every MoE layer pays twice) and of 1 MiB per peer (the bandwidth); gRPC (exchange/grpc_exchange.h)
//     among N in-process ranks on loopback ports, MPI (exchange/mpi_exchange.h) among N processes under
//     mpirun (moe-bench-exchange --calibration-bytes);
//   - the serving stack's own software cost, which neither of those covers, from probes of a real local
//     cluster of N workers per backend: 1, 2, 4, 8, 16 and 32 clients, each sending one short request at a
//     time, each load run several times on each of several starts of the cluster (medians). Per probe:
//     the clients' decode time per token, their median and mean TTFT and mean stream close (last token
//     to the stream's end), and the coordinator's own mean TTFT (request arrival to first token) and
//     mean step gap (from a step's results to the next admission), both from its /metrics. The step gap goes into the simulator as measured; its other software costs
//     are adjusted until it reproduces every probe (fixed-point rounds):
//       - the step's cost by sequences in it (a curve, one point per probe), from the decode times;
//       - the prefill's cost per step and per prompt row after the first, from the coordinator TTFT of
//         the one-client and the 32-client probes;
//       - the front end (the clients' TTFT beyond the coordinator's): the coordinator's intake and the
//         token's way back at one stream, each half of the one-client mean (a hand trace of the
//         one-worker probe measured 0.21 ms in and 0.19 ms out), and the way back's growth with the
//         streams in flight, fitted through all the probes;
//       - the stream close (one close at a time per replica), a line in the streams, from the clients'
//         mean closes.
#ifndef MOE_BENCH_CALIBRATION_H_
#define MOE_BENCH_CALIBRATION_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/load_client.h"
#include "checkpoint/model_config.h"
#include "cluster/local_cluster.h"
#include "common/dtype.h"
#include "nlohmann/json.hpp"
#include "simulation/serving.h"

namespace moe::bench {

struct KernelPoint {
  int64_t rows = 0;
  double flops_per_s = 0;
};

// A probe's figures: mean decode time per token, the clients' median (and mean) TTFT, the coordinator's mean
// TTFT, its mean step gap (from a step's results to the next admission; its /metrics keeps each
// histogram's sum and count), and the clients' mean stream close (from a finished request's last token
// to its stream's end, RequestTiming::close_s). The step gap is measured, not fitted: the simulator
// takes it as it is.
struct ProbeFigures {
  double decode_s = 0, client_ttft_p50_s = 0, coordinator_ttft_s = 0, step_gap_s = 0, stream_close_s = 0;
  double client_ttft_mean_s = 0;  // beside the coordinator's mean: the front end's way in and out, on average
  double prompts_per_prefill_step = 0;  // how the new requests coalesce: sequences prefilled / prefill steps
  // What a prefill step costs beyond the others: its mean time less the other steps' (the engine's
  // step histograms), and its prompt rows beyond one per sequence. Diagnostics, like the prompts per
  // prefill step: the fit does not use them.
  double prefill_extra_s = 0, rows_per_prefill_step = 0;
};

// One probe of the live cluster, measured and as the calibrated simulator reproduces it.
struct ServingProbe {
  int concurrency = 0;
  int requests = 0;  // requests per run (ProbeRequests(concurrency) since they are recorded)
  ProbeFigures measured, simulated;
};

enum class ExchangeBackend { kGrpc, kMpi };
const char* BackendName(ExchangeBackend backend);  // "grpc", "mpi"
std::optional<ExchangeBackend> ParseBackend(const std::string& name);  // BackendName's inverse
const char* BackendLauncher(ExchangeBackend backend);  // the cluster/ script: "run-local", "run-mpi"

// The costs of one cluster shape on this machine: `workers` workers exchanging over `backend`
// (cluster/run-local for gRPC, cluster/run-mpi for MPI). The simulator's ClusterSpec fields of the same
// names, in seconds (curves: (sequences in the step, seconds)).
struct WorkerCountCosts {
  int workers = 0;
  ExchangeBackend backend = ExchangeBackend::kGrpc;
  double exchange_latency_s = 0;  // small all-to-all among `workers` ranks (0 for one worker: no exchange)
  double exchange_bandwidth = 0;  // bytes/s one rank sends its peers in a large all-to-all (0 for one)
  std::vector<ServingProbe> probes;
  std::vector<std::pair<int64_t, double>> step_overhead_curve_s;
  std::vector<std::pair<int64_t, double>> step_gap_curve_s;  // the probes' measured gaps, at the same points
  double prefill_step_overhead_s = 0, prefill_row_overhead_s = 0;
  double request_overhead_s = 0;
  std::vector<std::pair<int64_t, double>> token_delivery_curve_s;
  std::vector<std::pair<int64_t, double>> stream_close_curve_s;  // the cost of one close (ClusterSpec::stream_close_curve)
};

struct Calibration {
  std::string model;  // the checkpoint whose shapes were measured
  int cores = 1;
  int64_t matmul_in_features = 0, matmul_out_features = 0;  // the measured matrix: hidden -> expert ffn
  DType weight_type = DType::kBF16;
  std::vector<KernelPoint> kernel;  // ascending rows
  std::vector<WorkerCountCosts> per_workers;  // by worker count, gRPC then (2+ workers) MPI
};

struct CalibrationOptions {
  std::string model_dir;  // also the model the probes serve
  std::vector<int> workers = {1, 2, 4};
  DType weight_type = DType::kBF16;  // how the workers store the weights (the checkpoint's type)
  int repeats = 41;
  // Fresh starts of each probed cluster. 0: no probes, and no serving costs fitted (the caller probes
  // clusters of its own with ProbeCluster and fits with FitServingOverheads).
  int probe_starts = 3;
  int probe_runs = 2;    // closed-loop runs per probe and start; the fit takes the medians of all their figures
  bool grpc = true;    // the gRPC clusters (cluster/run-local; one worker always: it exchanges nothing)
  bool mpi = true;     // the MPI clusters (cluster/run-mpi) of 2+ workers
};

// One run of a probe's closed loop against the cluster at `address`: `concurrency` clients, `requests`
// requests of the same 12-token prompts every time (ProbePrompts), kProbeMaxTokens tokens each.
inline constexpr int kProbeMaxTokens = 32;
int ProbeRequests(int concurrency);  // a probe's requests per run since 2026-11-29: max(12, 8 x concurrency)
LoadResult RunProbeLoad(const std::string& address, const ModelConfig& config, int concurrency, int requests);

// The probes' figures over runs, on one or several starts of a cluster: for each probe (ascending
// clients), every run's figures and the first run's requests (their shapes, for the simulator: the
// same every run).
struct ProbeSamples {
  struct Probe {
    int concurrency = 0;
    int requests = 0;  // per run
    LoadResult shapes;
    std::vector<ProbeFigures> runs;
  };
  std::vector<Probe> probes;
  ProbeSamples();  // every probe of the ladder the calibration runs (1 to 32 clients), no runs yet
  explicit ProbeSamples(std::vector<Probe> probes) : probes(std::move(probes)) {}
  ProbeFigures Medians(size_t probe) const;  // each figure's median over the probe's runs
};

// A probe's figures as the simulator's report of it gives them; the step gap is 0 (an input of the
// simulator, not one of its results).
ProbeFigures SimulatedProbeFigures(const sim::SimReport& report);

// Adds `runs` runs of every probe on the running cluster `live` (its coordinator's /metrics is read).
// INTERNAL when a probe request fails or /metrics has no TTFT histogram.
absl::Status ProbeCluster(const LocalCluster& live, const ModelConfig& config, int runs, ProbeSamples* samples);

// Fits `costs`' serving costs (the step-overhead and token-delivery curves, the prefill and intake
// costs) until the simulator, on `calibration`'s device and `costs`' exchange, reproduces the probes'
// medians; `costs->probes` gets the measured and simulated figures. INVALID_ARGUMENT for a probe
// without runs.
absl::Status FitServingOverheads(const ModelConfig& config, const sim::ModelShape& shape, const Calibration& calibration,
                                 const ProbeSamples& samples, WorkerCountCosts* costs);

// INVALID_ARGUMENT for an unreadable model config or a worker count < 1; INTERNAL when a loopback
// server cannot start, an exchange fails or mpirun does not report the MPI figures; the cluster's error
// when a probe cluster does not start or a probe request fails.
absl::StatusOr<Calibration> CalibrateThisMachine(const CalibrationOptions& options);

// The serving costs fitted again to the probes `calibration_json` (CalibrationJson's output) recorded,
// with the kernel and exchange figures it recorded: after a change to the simulator or the fit, without
// measuring again. Each probe's recorded medians stand for its runs. INVALID_ARGUMENT naming a missing
// or malformed field, or for an unreadable model config.
absl::StatusOr<Calibration> RefitCalibration(const nlohmann::json& calibration_json, const std::string& model_dir);

// The raw measurements, and the moe-sim cluster file (simulation/serving.h ClusterSpec) of this machine
// running `costs.workers` workers, one coordinator and one compute thread per worker: a device from the
// kernel curve, loopback ports at the exchange bandwidth, the step fan-out and exchange latency as fixed
// overheads, and the host's cores, which the workers computing at once share (ClusterSpec::host_cores).
nlohmann::json CalibrationJson(const Calibration& calibration);
// Named this-machine-<N>w (gRPC) or this-machine-<N>w-mpi.
nlohmann::json ThisMachineClusterJson(const Calibration& calibration, const WorkerCountCosts& costs);
std::string ClusterName(int workers, ExchangeBackend backend);

// Simulates a closed-loop load as the live cluster saw it: `concurrency` clients, each answered
// request's prompt and answer length, uniform expert popularity, every request on `task` when given.
absl::StatusOr<sim::SimReport> SimulateClosedLoop(const ModelConfig& config, const sim::ModelShape& shape,
                                                  const sim::ClusterSpec& cluster, const LoadResult& load,
                                                  int concurrency, const std::optional<sim::TaskProfile>& task);

// "bf16" or "f32" (a --weights flag: how the workers store the weights); nullopt for anything else.
std::optional<DType> ServedWeightType(const std::string& name);

// The model's shape as the CPU workers serve it: `bytes_per_weight` as stored, F32 hidden states on the wire.
sim::ModelShape ServedShape(const ModelConfig& config, const std::string& name, DType weight_type);

}  // namespace moe::bench

#endif  // MOE_BENCH_CALIBRATION_H_
