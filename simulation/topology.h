// Hosts and directed links between them, with shortest-hop routes; and the all-to-all collectives the
// simulator runs on them, with per-pair byte counts taken from the routing (not a uniform assumption).
#ifndef MOE_SIMULATION_TOPOLOGY_H_
#define MOE_SIMULATION_TOPOLOGY_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "simulation/network.h"

namespace moe::sim {

class Topology {
 public:
  explicit Topology(Network* network) : network_(network) {}

  int AddNode(const std::string& name);
  int num_nodes() const { return static_cast<int>(names_.size()); }
  // A directed link from -> to; INVALID_ARGUMENT naming the link for unknown nodes or a bad spec.
  absl::StatusOr<int> Connect(int from, int to, const LinkSpec& spec);
  // Fewest-hop path (link ids) from -> to; ties go to the lower link id. NOT_FOUND if unreachable.
  absl::StatusOr<std::vector<int>> Route(int from, int to) const;

 private:
  Network* network_;
  std::vector<std::string> names_;
  std::vector<std::vector<std::pair<int, int>>> out_;  // node -> (neighbour, link)
};

// Direct pairwise all-to-all: every node sends bytes[i][j] to every other node j at once, each over its
// route; `done` runs when the last transfer has arrived. INVALID_ARGUMENT for a matrix of the wrong
// shape, NOT_FOUND for a pair without a route.
absl::Status DirectAllToAll(Topology& topology, Network& network, const std::vector<std::vector<double>>& bytes,
                            std::function<void()> done);

}  // namespace moe::sim

#endif  // MOE_SIMULATION_TOPOLOGY_H_
