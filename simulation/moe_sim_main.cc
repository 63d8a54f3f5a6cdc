// moe-sim: what latency and throughput a model gets on a cluster under a workload, before rollout.
//   build/bin/moe-sim --cluster simulation/configs/h100-ep8.json --model simulation/configs/mixtral-8x7b.json
//                     --workload simulation/configs/chat-poisson.json [--json out.json] [--csv out.csv]
//                     [--svg out.svg] [--bytes-per-weight 2] [--activation-bytes 2]
// Exit status: 0 done, 1 bad input (the message names the file and field).
#include <fstream>
#include <iostream>

#include "absl/flags/flag.h"
#include "common/flags.h"
#include "common/log.h"
#include "simulation/report.h"
#include "simulation/serving.h"
#include "simulation/workload.h"

ABSL_FLAG(std::string, cluster, "", "cluster JSON (device, topology, workers, replicas, batching)");
ABSL_FLAG(std::string, model, "", "checkpoint directory or config.json");
ABSL_FLAG(std::string, workload, "", "workload JSON (arrivals, lengths, routing skew, tasks)");
ABSL_FLAG(std::string, json, "", "write the full report here");
ABSL_FLAG(std::string, csv, "", "write the summary row here");
ABSL_FLAG(std::string, svg, "", "write latency CDFs and link utilization over time here");
ABSL_FLAG(double, bytes_per_weight, 2, "weight precision as served (the CPU engine: 4)");
ABSL_FLAG(double, activation_bytes, 2, "bytes per hidden-state element on the wire (the CPU cluster: 4)");

namespace {
using moe::Fail;

bool Write(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  return static_cast<bool>(out);
}
}  // namespace

int main(int argc, char** argv) {
  moe::LogProgramName() = "moe-sim";
  moe::ParseFlags(argc, argv);
  if (absl::GetFlag(FLAGS_cluster).empty() || absl::GetFlag(FLAGS_model).empty() || absl::GetFlag(FLAGS_workload).empty()) {
    return Fail("--cluster, --model and --workload are required");
  }
  auto inputs = moe::sim::LoadSimulationInputs(absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_workload),
                                               absl::GetFlag(FLAGS_bytes_per_weight), absl::GetFlag(FLAGS_activation_bytes));
  if (!inputs.ok()) return Fail(inputs.status().ToString());
  auto cluster = moe::sim::ClusterSpec::FromFile(absl::GetFlag(FLAGS_cluster));
  if (!cluster.ok()) return Fail(cluster.status().ToString());
  auto report = moe::sim::SimulateServing(inputs->config, inputs->shape, inputs->popularity, *cluster, inputs->workload,
                                          inputs->requests);
  if (!report.ok()) return Fail(report.status().ToString());
  std::cout << cluster->name << " (" << cluster->total_workers() << " workers, "
            << (cluster->fidelity == moe::sim::Fidelity::kFlow ? "flow" : "fluid") << ") serving " << inputs->shape.name << "\n"
            << moe::sim::ReportSummary(*report);
  const std::string label = cluster->name;
  if (!absl::GetFlag(FLAGS_json).empty() && !Write(absl::GetFlag(FLAGS_json), moe::sim::ReportJson(*report).dump(1))) {
    return Fail("cannot write " + absl::GetFlag(FLAGS_json));
  }
  if (!absl::GetFlag(FLAGS_csv).empty() &&
      !Write(absl::GetFlag(FLAGS_csv), moe::sim::ReportCsvHeader() + moe::sim::ReportCsvRow(label, *report))) {
    return Fail("cannot write " + absl::GetFlag(FLAGS_csv));
  }
  if (!absl::GetFlag(FLAGS_svg).empty() &&
      !Write(absl::GetFlag(FLAGS_svg), moe::sim::ReportSvg(label + " serving " + inputs->shape.name, *report))) {
    return Fail("cannot write " + absl::GetFlag(FLAGS_svg));
  }
  return 0;
}
