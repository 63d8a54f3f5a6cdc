// moe-calibrate: measures this machine's parts (bench/calibration.h: kernels, the gRPC and MPI exchange
// backends, probes of a live local cluster per worker count and backend, ~3 minutes) and writes what
// the simulator needs to predict the live local cluster: calibration.json (the raw figures) and one
// moe-sim cluster file per worker count and backend, this-machine-<N>w.json (gRPC) and
// this-machine-<N>w-mpi.json (MPI, 2+ workers).
//   build/bin/moe-calibrate --model models/tiny-moe [--out build/calibration] [--workers 1,2,4]
//                           [--weights bf16|f32] [--repeats 41] [--probe-starts 3] [--probe-runs 2]
//                           [--mpi=false]
//   build/bin/moe-calibrate --model models/tiny-moe --refit OLD/calibration.json [--out DIR]
//     (the serving costs fitted again to the recorded probes; nothing measured)
// Exit status: 0 written, 1 bad flags or a failed measurement.
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "bench/calibration.h"
#include "common/flags.h"
#include "common/log.h"
#include "common/memory.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory whose shapes are measured");
ABSL_FLAG(std::string, out, "build/calibration", "directory for calibration.json and this-machine-<N>w.json");
ABSL_FLAG(std::vector<std::string>, workers, std::vector<std::string>({"1", "2", "4"}), "worker counts");
ABSL_FLAG(std::string, weights, "bf16", "how the workers store the weights: bf16 or f32 (the checkpoint's type)");
ABSL_FLAG(int32_t, repeats, moe::bench::CalibrationOptions{}.repeats, "samples per measurement (the median is kept)");
ABSL_FLAG(bool, mpi, true, "also probe the MPI clusters (cluster/run-mpi) of 2+ workers and measure the MPI backend");
ABSL_FLAG(int32_t, probe_starts, moe::bench::CalibrationOptions{}.probe_starts,
          "fresh starts of each probed cluster (the figures vary from start to start)");
ABSL_FLAG(int32_t, probe_runs, moe::bench::CalibrationOptions{}.probe_runs,
          "closed-loop runs of each live probe per start (the medians over all starts' runs are kept)");
ABSL_FLAG(std::string, refit, "",
          "a calibration.json: fit the serving costs again to the probes it recorded, measuring nothing (after a "
          "change to the simulator or the fit)");

namespace {
using moe::Fail;

bool Write(const std::filesystem::path& path, const nlohmann::json& json) {
  std::ofstream out(path);
  out << json.dump(1) << "\n";
  return static_cast<bool>(out);
}
}  // namespace

int main(int argc, char** argv) {
  moe::LogProgramName() = "moe-calibrate";
  moe::KeepLargeBuffersInTheHeap();  // as the workers whose exchange it measures
  moe::ParseFlags(argc, argv);
  moe::bench::CalibrationOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  if (options.model_dir.empty()) return Fail("--model is required");
  const std::string weights = absl::GetFlag(FLAGS_weights);
  const std::optional<moe::DType> weight_type = moe::bench::ServedWeightType(weights);
  if (!weight_type) return Fail("--weights must be bf16 or f32");
  options.weight_type = *weight_type;
  options.repeats = absl::GetFlag(FLAGS_repeats);
  options.probe_starts = absl::GetFlag(FLAGS_probe_starts);
  options.probe_runs = absl::GetFlag(FLAGS_probe_runs);
  options.mpi = absl::GetFlag(FLAGS_mpi);
  if (options.repeats < 1 || options.probe_starts < 1 || options.probe_runs < 1) {
    return Fail("--repeats, --probe-starts and --probe-runs must be >= 1");
  }
  options.workers.clear();
  for (const std::string& w : absl::GetFlag(FLAGS_workers)) {
    int n = 0;
    if (!absl::SimpleAtoi(w, &n) || n < 1) return Fail("--workers must list positive integers");
    options.workers.push_back(n);
  }
  absl::StatusOr<moe::bench::Calibration> c;
  if (const std::string refit = absl::GetFlag(FLAGS_refit); !refit.empty()) {
    std::ifstream in(refit);
    const nlohmann::json recorded = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (!in || recorded.is_discarded()) return Fail("cannot read " + refit + " as JSON");
    c = moe::bench::RefitCalibration(recorded, options.model_dir);
  } else {
    c = moe::bench::CalibrateThisMachine(options);
  }
  if (!c.ok()) return Fail(c.status().ToString());

  std::cout << absl::StrFormat("%d cores; matmul [%d x %d] %s weights, 1 thread:\n| rows | GFLOP/s |\n|---|---|\n", c->cores,
                               c->matmul_out_features, c->matmul_in_features, weights);
  for (const auto& p : c->kernel) std::cout << absl::StrFormat("| %d | %.2f |\n", p.rows, p.flops_per_s / 1e9);
  const auto cluster_label = [](const moe::bench::WorkerCountCosts& w) {
    return absl::StrFormat("%d, %s", w.workers, moe::bench::BackendName(w.backend));
  };
  std::cout << "| workers, exchange | all-to-all latency us | all-to-all GB/s per rank | prefill per-step us | "
               "prefill per-row us | intake us |\n|---|---|---|---|---|---|\n";
  for (const auto& w : c->per_workers) {
    std::cout << absl::StrFormat("| %s | %.0f | %.3f | %.0f | %.0f | %.0f |\n", cluster_label(w), w.exchange_latency_s * 1e6,
                                 w.exchange_bandwidth / 1e9, w.prefill_step_overhead_s * 1e6, w.prefill_row_overhead_s * 1e6,
                                 w.request_overhead_s * 1e6);
  }
  std::cout << "| workers, exchange | clients | decode ms/token live | sim | client TTFT p50 ms live | sim | coordinator mean "
               "TTFT ms live | sim | prompts per prefill step live | sim | prefill step's extra us live | sim | stream close us live | "
               "sim | measured step gap us | fitted step overhead us | fitted token delivery us | fitted close us |\n"
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& w : c->per_workers) {
    for (size_t i = 0; i < w.probes.size(); ++i) {
      const auto& p = w.probes[i];
      std::cout << absl::StrFormat("| %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f | %.0f | %.0f | %.0f | %.0f | "
                                   "%.0f | %.0f | %.0f |\n",
                                   cluster_label(w),
                                   p.concurrency, p.measured.decode_s * 1e3, p.simulated.decode_s * 1e3,
                                   p.measured.client_ttft_p50_s * 1e3, p.simulated.client_ttft_p50_s * 1e3,
                                   p.measured.coordinator_ttft_s * 1e3, p.simulated.coordinator_ttft_s * 1e3,
                                   p.measured.prompts_per_prefill_step, p.simulated.prompts_per_prefill_step,
                                   p.measured.prefill_extra_s * 1e6, p.simulated.prefill_extra_s * 1e6,
                                   p.measured.stream_close_s * 1e6, p.simulated.stream_close_s * 1e6,
                                   w.step_gap_curve_s[i].second * 1e6, w.step_overhead_curve_s[i].second * 1e6,
                                   w.token_delivery_curve_s[i].second * 1e6, w.stream_close_curve_s[i].second * 1e6);
    }
  }
  const std::filesystem::path out = absl::GetFlag(FLAGS_out);
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  if (ec) return Fail("cannot create " + out.string() + ": " + ec.message());
  if (!Write(out / "calibration.json", moe::bench::CalibrationJson(*c))) return Fail("cannot write into " + out.string());
  for (const auto& w : c->per_workers) {
    const std::filesystem::path path = out / (moe::bench::ClusterName(w.workers, w.backend) + ".json");
    if (!Write(path, moe::bench::ThisMachineClusterJson(*c, w))) return Fail("cannot write " + path.string());
    std::cout << "wrote " << path.string() << "\n";
  }
  return 0;
}
