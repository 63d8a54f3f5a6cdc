// moe-plan: the cheapest cluster that meets a latency SLO at a given load. Simulates every candidate
// (GPU count x expert-parallel size x placement option) and prints the ranking and why each candidate
// passes or fails.
//   build/bin/moe-plan --cluster simulation/configs/h100-node.json --model simulation/configs/mixtral-8x7b.json
//                      --workload simulation/configs/chat-poisson.json --ttft-p99 0.5 --itl-p99 0.05
//                      [--gpus 8,16,32] [--ep 1,2,4,8] [--replicate 0,1.5] [--device-memory-gb 80]
// Exit status: 0 a feasible plan exists, 2 none does, 1 bad input.
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "common/flags.h"
#include "common/log.h"
#include "simulation/planner.h"

ABSL_FLAG(std::string, cluster, "", "base cluster JSON: device, topology shape, batching, device_hour_cost");
ABSL_FLAG(std::string, model, "", "checkpoint directory or config.json");
ABSL_FLAG(std::string, workload, "", "workload JSON: the load the plan must carry");
ABSL_FLAG(double, ttft_p99, 1.0, "SLO: p99 time to first token, seconds");
ABSL_FLAG(double, itl_p99, 0.1, "SLO: p99 inter-token latency, seconds");
ABSL_FLAG(std::vector<std::string>, gpus, std::vector<std::string>({"8", "16", "32", "64"}), "total GPU counts to try");
ABSL_FLAG(std::vector<std::string>, ep, std::vector<std::string>({"1", "2", "4", "8", "16"}), "expert-parallel sizes to try");
ABSL_FLAG(std::vector<std::string>, replicate, std::vector<std::string>({"0", "1.5"}),
          "placement: replicate experts loaded above this multiple of the mean (0: never)");
ABSL_FLAG(double, device_memory_gb, 80, "memory per GPU; weights may use 90% of it");
ABSL_FLAG(double, bytes_per_weight, 2, "weight precision as served");
ABSL_FLAG(double, activation_bytes, 2, "bytes per hidden-state element on the wire");

namespace {
using moe::Fail;

template <typename T>
bool ParseList(const std::vector<std::string>& in, std::vector<T>* out) {
  for (const std::string& s : in) {
    double v;
    if (!absl::SimpleAtod(s, &v)) return false;
    out->push_back(static_cast<T>(v));
  }
  return !out->empty();
}
}  // namespace

int main(int argc, char** argv) {
  moe::LogProgramName() = "moe-plan";
  moe::ParseFlags(argc, argv);
  if (absl::GetFlag(FLAGS_cluster).empty() || absl::GetFlag(FLAGS_model).empty() || absl::GetFlag(FLAGS_workload).empty()) {
    return Fail("--cluster, --model and --workload are required");
  }
  moe::sim::PlanSearch search;
  if (!ParseList(absl::GetFlag(FLAGS_gpus), &search.gpu_counts) || !ParseList(absl::GetFlag(FLAGS_ep), &search.expert_parallel) ||
      !ParseList(absl::GetFlag(FLAGS_replicate), &search.replicate_above)) {
    return Fail("--gpus, --ep and --replicate take comma-separated numbers");
  }
  search.device_memory_bytes = absl::GetFlag(FLAGS_device_memory_gb) * 1e9;
  auto inputs = moe::sim::LoadSimulationInputs(absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_workload),
                                               absl::GetFlag(FLAGS_bytes_per_weight), absl::GetFlag(FLAGS_activation_bytes));
  if (!inputs.ok()) return Fail(inputs.status().ToString());
  auto base = moe::sim::ClusterSpec::FromFile(absl::GetFlag(FLAGS_cluster));
  if (!base.ok()) return Fail(base.status().ToString());
  const moe::sim::Slo slo{absl::GetFlag(FLAGS_ttft_p99), absl::GetFlag(FLAGS_itl_p99)};
  auto rows = moe::sim::PlanCluster(*inputs, *base, slo, search);
  if (!rows.ok()) return Fail(rows.status().ToString());
  std::cout << absl::StrFormat("%s on %s, %zu requests; SLO p99 TTFT <= %.3f s, p99 inter-token <= %.4f s\n\n", inputs->shape.name,
                               base->device.name, inputs->requests.size(), slo.ttft_p99_s, slo.inter_token_p99_s)
            << "| rank | GPUs | EP | replicas | replicate | all-to-all | weights/GPU | tokens/s | TTFT p99 | ITL p99 | cost/h | verdict |\n"
            << "|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  int rank = 0;
  for (const moe::sim::PlanRow& r : *rows) {
    std::cout << absl::StrFormat("| %s | %d | %d | %d | %s | %s | %.1f GB | %.0f | %.3f s | %.4f s | %.2f | %s |\n",
                                 r.feasible ? std::to_string(++rank) : "-", r.gpus, r.expert_parallel, r.replicas,
                                 r.replicate_above > 0 ? absl::StrFormat("> %.1fx mean", r.replicate_above) : "no", r.all_to_all,
                                 r.weight_bytes_per_gpu / 1e9, r.report.tokens_per_s, r.report.ttft.Percentile(0.99),
                                 r.report.inter_token.Percentile(0.99), r.cost_per_hour, r.why);
  }
  if (rows->empty() || !rows->front().feasible) {
    std::cout << "\nno candidate meets the SLO: try more GPUs (--gpus) or a looser SLO\n";
    return 2;
  }
  const moe::sim::PlanRow& best = rows->front();
  std::cout << absl::StrFormat("\nplan: %d GPUs as %d replicas of EP%d (%s all-to-all%s), %.2f per hour: the cheapest candidate that %s\n",
                               best.gpus, best.replicas, best.expert_parallel, best.all_to_all,
                               best.replicate_above > 0 ? ", hot experts replicated" : "", best.cost_per_hour, best.why);
  return 0;
}
