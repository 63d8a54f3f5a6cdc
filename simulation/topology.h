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
  // The node named `name`; -1 if none.
  int FindNode(const std::string& name) const;
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

// Hierarchical all-to-all (DeepEP's internode scheme): node i sits on host host[i] with local rank
// local[i]. Phase 1: traffic within a host goes directly; traffic to another host goes, aggregated per
// destination host, to the node of the same local rank there (one transfer per rail). Phase 2, once
// phase 1 has finished: that node forwards each piece to its final destination inside the host.
// `done` runs when phase 2 has finished. INVALID_ARGUMENT for inconsistent shapes, NOT_FOUND when a
// needed route (or a same-local-rank peer) does not exist.
absl::Status HierarchicalAllToAll(Topology& topology, Network& network, const std::vector<std::vector<double>>& bytes,
                                  const std::vector<int>& host, const std::vector<int>& local,
                                  std::function<void()> done);

}  // namespace moe::sim

#endif  // MOE_SIMULATION_TOPOLOGY_H_
