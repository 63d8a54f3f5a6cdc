// Topologies from a JSON config, validated with errors that name the offending field:
//   {"nodes": ["gpu0", "gpu1", ...],
//    "links": [{"name": "nvlink0", "from": "gpu0", "to": "gpu1", "bandwidth_gbps": 150,
//               "latency_ns": 500, "bidirectional": true}, ...]}
// bandwidth_gbps is in gigabytes per second; bidirectional (default true) adds the reverse link too.
#ifndef MOE_SIMULATION_TOPOLOGY_CONFIG_H_
#define MOE_SIMULATION_TOPOLOGY_CONFIG_H_

#include <string>

#include "absl/status/status.h"
#include "simulation/topology.h"

namespace moe::sim {

// Adds the config's nodes and links to `topology` (which should be empty). INVALID_ARGUMENT naming the
// field for malformed JSON, a missing or mistyped field, a duplicate node, a link to a node that does not
// exist, or a non-positive bandwidth / negative latency.
absl::Status BuildTopologyFromJson(const std::string& json_text, Topology* topology);

}  // namespace moe::sim

#endif  // MOE_SIMULATION_TOPOLOGY_CONFIG_H_
