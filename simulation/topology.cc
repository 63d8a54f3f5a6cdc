#include "simulation/topology.h"

#include <deque>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moe::sim {

int Topology::AddNode(const std::string& name) {
  names_.push_back(name);
  out_.emplace_back();
  return num_nodes() - 1;
}

int Topology::FindNode(const std::string& name) const {
  for (int n = 0; n < num_nodes(); ++n) {
    if (names_[n] == name) return n;
  }
  return -1;
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

namespace {
// Starts every (from, to, bytes) transfer at once; `done` runs when all have arrived.
absl::Status StartTransfers(Topology& topology, Network& network, const std::map<std::pair<int, int>, double>& transfers,
                            std::function<void()> done) {
  auto left = std::make_shared<int>(0);
  auto finish = std::make_shared<std::function<void()>>(std::move(done));
  std::vector<std::pair<std::vector<int>, double>> flows;
  for (const auto& [pair, b] : transfers) {
    if (pair.first == pair.second || b == 0) continue;
    MOE_ASSIGN_OR_RETURN(std::vector<int> path, topology.Route(pair.first, pair.second));
    flows.emplace_back(std::move(path), b);
  }
  *left = static_cast<int>(flows.size());
  if (flows.empty()) {
    (*finish)();
    return absl::OkStatus();
  }
  for (auto& [path, b] : flows) {
    MOE_RETURN_IF_ERROR(network.StartFlow(path, b, [left, finish] {
      if (--*left == 0) (*finish)();
    }));
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status DirectAllToAll(Topology& topology, Network& network, const std::vector<std::vector<double>>& bytes,
                            std::function<void()> done) {
  const int n = topology.num_nodes();
  if (static_cast<int>(bytes.size()) != n) return absl::InvalidArgumentError("all-to-all: one row of bytes per node");
  std::map<std::pair<int, int>, double> transfers;
  for (int i = 0; i < n; ++i) {
    if (static_cast<int>(bytes[i].size()) != n) return absl::InvalidArgumentError("all-to-all: one column of bytes per node");
    for (int j = 0; j < n; ++j) transfers[{i, j}] = bytes[i][j];
  }
  return StartTransfers(topology, network, transfers, std::move(done));
}

absl::Status HierarchicalAllToAll(Topology& topology, Network& network, const std::vector<std::vector<double>>& bytes,
                                  const std::vector<int>& host, const std::vector<int>& local,
                                  std::function<void()> done) {
  const int n = topology.num_nodes();
  if (static_cast<int>(bytes.size()) != n || static_cast<int>(host.size()) != n || static_cast<int>(local.size()) != n) {
    return absl::InvalidArgumentError("hierarchical all-to-all: bytes, host and local rank must cover every node");
  }
  std::map<std::pair<int, int>, int> node_at;  // (host, local rank) -> node
  for (int i = 0; i < n; ++i) node_at[{host[i], local[i]}] = i;
  std::map<std::pair<int, int>, double> phase1, phase2;
  for (int i = 0; i < n; ++i) {
    if (static_cast<int>(bytes[i].size()) != n) return absl::InvalidArgumentError("hierarchical all-to-all: one column per node");
    for (int j = 0; j < n; ++j) {
      if (i == j || bytes[i][j] == 0) continue;
      if (host[i] == host[j]) {
        phase1[{i, j}] += bytes[i][j];
        continue;
      }
      auto relay = node_at.find({host[j], local[i]});
      if (relay == node_at.end()) {
        return absl::NotFoundError(absl::StrCat("hierarchical all-to-all: host ", host[j], " has no local rank ", local[i]));
      }
      phase1[{i, relay->second}] += bytes[i][j];
      phase2[{relay->second, j}] += bytes[i][j];
    }
  }
  for (const auto& [pair, b] : phase2) MOE_RETURN_IF_ERROR(topology.Route(pair.first, pair.second).status());
  auto second = std::make_shared<std::map<std::pair<int, int>, double>>(std::move(phase2));
  return StartTransfers(topology, network, phase1, [&topology, &network, second, done = std::move(done)]() mutable {
    // Every second-phase route was checked above and byte counts are >= 0: starting cannot fail.
    StartTransfers(topology, network, *second, std::move(done)).IgnoreError();
  });
}

}  // namespace moe::sim
