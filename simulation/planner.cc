#include "simulation/planner.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace moe::sim {

double WeightBytesPerWorker(const ModelShape& s, int expert_parallel) {
  const double h = static_cast<double>(s.hidden);
  double dense = 2.0 * h * static_cast<double>(s.vocab);  // embedding + LM head
  double experts = 0;
  for (int64_t l = 0; l < s.layers; ++l) {
    dense += s.AttentionWeightBytes() / s.bytes_per_weight;
    if (!s.moe_layer[l]) {
      dense += 3.0 * h * static_cast<double>(s.dense_ffn);
      continue;
    }
    dense += 3.0 * h * static_cast<double>(s.shared_expert_ffn) + h * static_cast<double>(s.num_experts);
    experts += 3.0 * h * static_cast<double>(s.expert_ffn) * static_cast<double>(s.num_experts);
  }
  return (dense + experts / expert_parallel) * s.bytes_per_weight;
}

absl::StatusOr<std::vector<PlanRow>> PlanCluster(const SimulationInputs& in, const ClusterSpec& base, const Slo& slo,
                                                 const PlanSearch& search) {
  std::vector<PlanRow> rows;
  for (int gpus : search.gpu_counts) {
    for (int ep : search.expert_parallel) {
      if (ep < 1 || gpus % ep != 0) continue;
      for (double replicate : search.replicate_above) {
        PlanRow row;
        row.gpus = gpus;
        row.expert_parallel = ep;
        row.replicas = gpus / ep;
        row.replicate_above = replicate;
        row.cost_per_hour = gpus * base.device_hour_cost;
        row.weight_bytes_per_gpu = WeightBytesPerWorker(in.shape, ep);
        ClusterSpec c = base;
        c.workers = ep;
        c.replicas = row.replicas;
        c.placement.replicate_above = replicate;
        if (c.topology != "loopback") {
          c.shape.hosts = std::max(1, (gpus + c.shape.gpus_per_host - 1) / c.shape.gpus_per_host);
          if (c.topology == "single_node" && gpus > c.shape.gpus_per_host) c.topology = "rail_optimized";
        }
        c.all_to_all = ep > c.shape.gpus_per_host && c.topology != "loopback" ? "hierarchical" : "direct";
        if (c.all_to_all == "hierarchical") c.fidelity = Fidelity::kFluid;
        row.all_to_all = c.all_to_all;
        c.name = absl::StrFormat("%dgpu-ep%d%s", gpus, ep, replicate > 0 ? absl::StrFormat("-rep%.1f", replicate) : "");
        if (row.weight_bytes_per_gpu > search.device_memory_bytes * search.weight_memory_fraction) {
          row.why = absl::StrFormat("weights %.1f GB per GPU exceed %.0f%% of %.0f GB", row.weight_bytes_per_gpu / 1e9,
                                    100 * search.weight_memory_fraction, search.device_memory_bytes / 1e9);
          rows.push_back(row);
          continue;
        }
        auto report = SimulateServing(in.config, in.shape, in.popularity, c, in.workload, in.requests);
        if (!report.ok()) return report.status();
        row.report = *report;
        const double ttft = report->ttft.Percentile(0.99), itl = report->inter_token.Percentile(0.99);
        if (report->rejected > 0) {
          row.why = absl::StrFormat("%d requests refused (queue full)", report->rejected);
        } else if (ttft > slo.ttft_p99_s) {
          row.why = absl::StrFormat("p99 TTFT %.3f s > %.3f s", ttft, slo.ttft_p99_s);
        } else if (itl > slo.inter_token_p99_s) {
          row.why = absl::StrFormat("p99 inter-token %.4f s > %.4f s", itl, slo.inter_token_p99_s);
        } else {
          row.feasible = true;
          row.why = absl::StrFormat("meets the SLO (p99 TTFT %.3f s, p99 inter-token %.4f s)", ttft, itl);
        }
        rows.push_back(row);
      }
    }
  }
  std::stable_sort(rows.begin(), rows.end(), [](const PlanRow& a, const PlanRow& b) {
    if (a.feasible != b.feasible) return a.feasible;
    if (a.cost_per_hour != b.cost_per_hour) return a.cost_per_hour < b.cost_per_hour;
    return a.report.inter_token.Percentile(0.99) < b.report.inter_token.Percentile(0.99);
  });
  return rows;
}

}  // namespace moe::sim
