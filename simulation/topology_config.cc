#include "simulation/topology_config.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace moe::sim {

absl::Status BuildTopologyFromJson(const std::string& json_text, Topology* topology) {
  const nlohmann::json config = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) return absl::InvalidArgumentError("topology: not valid JSON");
  if (!config.is_object() || !config.contains("nodes") || !config["nodes"].is_array() || config["nodes"].empty()) {
    return absl::InvalidArgumentError("topology: 'nodes' must be a non-empty array of names");
  }
  std::map<std::string, int> ids;
  for (size_t i = 0; i < config["nodes"].size(); ++i) {
    const auto& name = config["nodes"][i];
    if (!name.is_string()) return absl::InvalidArgumentError(absl::StrCat("topology: nodes[", i, "] must be a string"));
    if (ids.count(name.get<std::string>())) {
      return absl::InvalidArgumentError(absl::StrCat("topology: nodes[", i, "]: duplicate node '", name.get<std::string>(), "'"));
    }
    ids[name.get<std::string>()] = topology->AddNode(name.get<std::string>());
  }
  if (!config.contains("links") || !config["links"].is_array()) {
    return absl::InvalidArgumentError("topology: 'links' must be an array");
  }
  for (size_t i = 0; i < config["links"].size(); ++i) {
    const auto& link = config["links"][i];
    const std::string where = absl::StrCat("topology: links[", i, "]");
    if (!link.is_object()) return absl::InvalidArgumentError(where + " must be an object");
    int ends[2];
    const char* keys[2] = {"from", "to"};
    for (int k = 0; k < 2; ++k) {
      if (!link.contains(keys[k]) || !link[keys[k]].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".", keys[k], " must name a node"));
      }
      auto it = ids.find(link[keys[k]].get<std::string>());
      if (it == ids.end()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".", keys[k], ": no node '", link[keys[k]].get<std::string>(), "'"));
      }
      ends[k] = it->second;
    }
    if (!link.contains("bandwidth_gbps") || !link["bandwidth_gbps"].is_number() || !(link["bandwidth_gbps"].get<double>() > 0)) {
      return absl::InvalidArgumentError(where + ".bandwidth_gbps must be a number > 0");
    }
    const double latency = link.value("latency_ns", 0.0);
    if (!link.value("latency_ns", nlohmann::json(0)).is_number() || latency < 0) {
      return absl::InvalidArgumentError(where + ".latency_ns must be a number >= 0");
    }
    const std::string name = link.value("name", absl::StrCat("links[", i, "]"));
    const LinkSpec spec{name, link["bandwidth_gbps"].get<double>() * 1e9, static_cast<Nanos>(latency)};
    MOE_RETURN_IF_ERROR(topology->Connect(ends[0], ends[1], spec).status());
    if (link.value("bidirectional", true)) MOE_RETURN_IF_ERROR(topology->Connect(ends[1], ends[0], spec).status());
  }
  return absl::OkStatus();
}

}  // namespace moe::sim
