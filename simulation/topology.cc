#include "simulation/topology.h"

#include <deque>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moe::sim {

int Topology::AddNode(const std::string& name) {
  names_.push_back(name);
  out_.emplace_back();
  return num_nodes() - 1;
}

absl::StatusOr<int> Topology::Connect(int from, int to, const LinkSpec& spec) {
  if (from < 0 || from >= num_nodes() || to < 0 || to >= num_nodes()) {
    return absl::InvalidArgumentError(absl::StrCat("link '", spec.name, "' connects a node that does not exist (",
                                                   from, " -> ", to, ")"));
  }
  MOE_ASSIGN_OR_RETURN(int link, network_->AddLink(spec));
  out_[from].emplace_back(to, link);
  return link;
}

absl::StatusOr<std::vector<int>> Topology::Route(int from, int to) const {
  if (from < 0 || from >= num_nodes() || to < 0 || to >= num_nodes()) {
    return absl::InvalidArgumentError(absl::StrCat("route ", from, " -> ", to, ": no such node"));
  }
  std::vector<int> via_link(static_cast<size_t>(num_nodes()), -1), prev(static_cast<size_t>(num_nodes()), -1);
  std::vector<bool> seen(static_cast<size_t>(num_nodes()), false);
  std::deque<int> frontier = {from};
  seen[from] = true;
  while (!frontier.empty() && !seen[to]) {
    const int n = frontier.front();
    frontier.pop_front();
    for (const auto& [next, link] : out_[n]) {
      if (seen[next]) continue;
      seen[next] = true;
      prev[next] = n;
      via_link[next] = link;
      frontier.push_back(next);
    }
  }
  if (!seen[to]) return absl::NotFoundError(absl::StrCat("no route from ", names_[from], " to ", names_[to]));
  std::vector<int> path;
  for (int n = to; n != from; n = prev[n]) path.insert(path.begin(), via_link[n]);
  return path;
}

absl::Status DirectAllToAll(Topology& topology, Network& network, const std::vector<std::vector<double>>& bytes,
                            std::function<void()> done) {
  const int n = topology.num_nodes();
  if (static_cast<int>(bytes.size()) != n) return absl::InvalidArgumentError("all-to-all: one row of bytes per node");
  struct Pending {
    int left = 0;
    std::function<void()> done;
  };
  auto pending = std::make_shared<Pending>();
  pending->done = std::move(done);
  std::vector<std::pair<std::vector<int>, double>> transfers;
  for (int i = 0; i < n; ++i) {
    if (static_cast<int>(bytes[i].size()) != n) return absl::InvalidArgumentError("all-to-all: one column of bytes per node");
    for (int j = 0; j < n; ++j) {
      if (i == j || bytes[i][j] == 0) continue;
      MOE_ASSIGN_OR_RETURN(std::vector<int> path, topology.Route(i, j));
      transfers.emplace_back(std::move(path), bytes[i][j]);
    }
  }
  pending->left = static_cast<int>(transfers.size());
  if (transfers.empty()) {
    pending->done();
    return absl::OkStatus();
  }
  for (auto& [path, b] : transfers) {
    MOE_RETURN_IF_ERROR(network.StartFlow(path, b, [pending] {
      if (--pending->left == 0) pending->done();
    }));
  }
  return absl::OkStatus();
}

}  // namespace moe::sim
