#include "coordinator/placement.h"

#include <algorithm>
#include <numeric>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace moe {

absl::StatusOr<ShardMap> PlaceExperts(const ModelConfig& c, int num_workers,
                                      const std::vector<std::vector<double>>& expert_load,
                                      const PlacementOptions& options, uint64_t epoch) {
  if (num_workers < 1) return absl::InvalidArgumentError("placement needs at least one worker");
  if (!expert_load.empty() && static_cast<int64_t>(expert_load.size()) != c.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("expert load has ", expert_load.size(), " layers, the model ", c.num_layers));
  }
  ShardMap m;
  m.epoch = epoch;
  m.num_workers = num_workers;
  m.stages = ShardMap::SingleStage(c.num_layers, num_workers);
  m.owners.resize(static_cast<size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    if (!c.IsMoeLayer(l)) continue;
    std::vector<double> load(static_cast<size_t>(c.num_experts), 1.0);
    if (!expert_load.empty() && !expert_load[l].empty()) {
      if (static_cast<int64_t>(expert_load[l].size()) != c.num_experts) {
        return absl::InvalidArgumentError(absl::StrCat("expert load of layer ", l, " has ", expert_load[l].size(), " experts"));
      }
      load = expert_load[l];
      for (double& x : load) x = std::max(x, 0.0) + 1e-9;  // keep unused experts placeable
    }
    std::vector<int> order(static_cast<size_t>(c.num_experts));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return load[a] > load[b]; });
    std::vector<double> worker_load(static_cast<size_t>(num_workers), 0.0);
    std::vector<int> worker_count(static_cast<size_t>(num_workers), 0);
    m.owners[l].assign(static_cast<size_t>(c.num_experts), {});
    const double mean = std::accumulate(load.begin(), load.end(), 0.0) / static_cast<double>(c.num_experts);
    auto least_loaded = [&](int exclude) {
      int best = -1;
      for (int w = 0; w < num_workers; ++w) {
        if (w == exclude) continue;
        if (best < 0 || worker_load[w] < worker_load[best] ||
            (worker_load[w] == worker_load[best] && worker_count[w] < worker_count[best])) {
          best = w;
        }
      }
      return best;
    };
    for (int e : order) {
      const bool replicate = options.replicate_above > 0 && num_workers > 1 && load[e] > options.replicate_above * mean;
      const int first = least_loaded(-1);
      m.owners[l][e].push_back(first);
      const double share = replicate ? load[e] / 2 : load[e];
      worker_load[first] += share;
      ++worker_count[first];
      if (replicate) {
        const int second = least_loaded(first);
        m.owners[l][e].push_back(second);
        worker_load[second] += share;
        ++worker_count[second];
      }
    }
  }
  return m;
}

absl::StatusOr<std::vector<std::vector<double>>> ReadExpertLoadFile(const std::string& path, const ModelConfig& c) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  const auto j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  std::vector<const nlohmann::json*> tables;
  if (j.contains("expert_load")) {
    tables.push_back(&j["expert_load"]);
  } else if (j.contains("tasks") && j["tasks"].is_object()) {
    for (const auto& [task, result] : j["tasks"].items()) {
      if (result.is_object() && result.contains("expert_usage")) tables.push_back(&result["expert_usage"]);
    }
  }
  if (tables.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": needs \"expert_load\" or moe-eval \"tasks\""));
  std::vector<std::vector<double>> load(static_cast<size_t>(c.num_layers));
  for (const nlohmann::json* t : tables) {
    if (!t->is_array() || static_cast<int64_t>(t->size()) != c.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": expert load must have one row per layer (", c.num_layers, ")"));
    }
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const nlohmann::json& row = (*t)[static_cast<size_t>(l)];
      if (!row.is_array() || (!row.empty() && static_cast<int64_t>(row.size()) != c.num_experts)) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": layer ", l, " must list ", c.num_experts, " experts"));
      }
      if (row.empty()) continue;
      load[l].resize(static_cast<size_t>(c.num_experts), 0.0);
      for (int64_t e = 0; e < c.num_experts; ++e) {
        if (!row[static_cast<size_t>(e)].is_number()) return absl::InvalidArgumentError(absl::StrCat(path, ": layer ", l, ": non-numeric load"));
        load[l][e] += row[static_cast<size_t>(e)].get<double>();
      }
    }
  }
  return load;
}

}  // namespace moe
