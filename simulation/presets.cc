#include "simulation/presets.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moe::sim {

namespace {

absl::Status Join(Topology* t, int a, int b, const std::string& name, double bandwidth, Nanos latency) {
  MOE_RETURN_IF_ERROR(t->Connect(a, b, {name + ".tx", bandwidth, latency}).status());
  return t->Connect(b, a, {name + ".rx", bandwidth, latency}).status();
}

absl::Status CheckShape(const ClusterShape& s) {
  if (s.hosts < 1) return absl::InvalidArgumentError("cluster shape: hosts must be >= 1");
  if (s.gpus_per_host < 1) return absl::InvalidArgumentError("cluster shape: gpus_per_host must be >= 1");
  if (s.hosts_per_leaf < 1) return absl::InvalidArgumentError("cluster shape: hosts_per_leaf must be >= 1");
  return absl::OkStatus();
}

// GPUs of every host, each joined to its host's NVSwitch.
absl::StatusOr<Placement> Hosts(const ClusterShape& s, Topology* t) {
  MOE_RETURN_IF_ERROR(CheckShape(s));
  Placement p;
  for (int h = 0; h < s.hosts; ++h) {
    const int nvswitch = t->AddNode(absl::StrCat("h", h, ".nvswitch"));
    for (int g = 0; g < s.gpus_per_host; ++g) {
      const int gpu = t->AddNode(absl::StrCat("h", h, ".g", g));
      MOE_RETURN_IF_ERROR(Join(t, gpu, nvswitch, absl::StrCat("h", h, ".nvlink", g), s.intra_host_bandwidth,
                               s.intra_host_latency));
      p.nodes.push_back(gpu);
      p.host.push_back(h);
      p.local.push_back(g);
    }
  }
  return p;
}

}  // namespace

void Placement::Expand(int num_nodes, const std::vector<std::vector<double>>& gpu_bytes,
                       std::vector<std::vector<double>>* bytes, std::vector<int>* node_host,
                       std::vector<int>* node_local) const {
  bytes->assign(static_cast<size_t>(num_nodes), std::vector<double>(static_cast<size_t>(num_nodes), 0.0));
  node_host->assign(static_cast<size_t>(num_nodes), -1);
  node_local->assign(static_cast<size_t>(num_nodes), -1);
  for (size_t i = 0; i < nodes.size(); ++i) {
    (*node_host)[nodes[i]] = host[i];
    (*node_local)[nodes[i]] = local[i];
    for (size_t j = 0; j < nodes.size(); ++j) (*bytes)[nodes[i]][nodes[j]] = gpu_bytes[i][j];
  }
}

absl::StatusOr<Placement> SingleNode(const ClusterShape& shape, Topology* topology) {
  ClusterShape one = shape;
  one.hosts = 1;
  return Hosts(one, topology);
}

absl::StatusOr<Placement> RailOptimized(const ClusterShape& s, Topology* t) {
  MOE_ASSIGN_OR_RETURN(Placement p, Hosts(s, t));
  for (int g = 0; g < s.gpus_per_host; ++g) {
    const int rail = t->AddNode(absl::StrCat("rail", g));
    for (size_t i = 0; i < p.nodes.size(); ++i) {
      if (p.local[i] != g) continue;
      MOE_RETURN_IF_ERROR(Join(t, p.nodes[i], rail, absl::StrCat("h", p.host[i], ".nic", g), s.nic_bandwidth, s.nic_latency));
    }
  }
  return p;
}

absl::StatusOr<Placement> FatTree(const ClusterShape& s, Topology* t) {
  MOE_ASSIGN_OR_RETURN(Placement p, Hosts(s, t));
  const int spine = t->AddNode("spine");
  const int leaves = (s.hosts + s.hosts_per_leaf - 1) / s.hosts_per_leaf;
  std::vector<int> leaf(static_cast<size_t>(leaves));
  for (int l = 0; l < leaves; ++l) {
    leaf[l] = t->AddNode(absl::StrCat("leaf", l));
    MOE_RETURN_IF_ERROR(Join(t, leaf[l], spine, absl::StrCat("leaf", l, ".uplink"), s.spine_bandwidth, s.nic_latency));
  }
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    MOE_RETURN_IF_ERROR(Join(t, p.nodes[i], leaf[p.host[i] / s.hosts_per_leaf],
                             absl::StrCat("h", p.host[i], ".nic", p.local[i]), s.nic_bandwidth, s.nic_latency));
  }
  return p;
}

absl::StatusOr<Placement> Loopback(int workers, double bandwidth, Nanos latency, Topology* t) {
  if (workers < 1) return absl::InvalidArgumentError("loopback: workers must be >= 1");
  Placement p;
  const int kernel = t->AddNode("loopback");
  for (int w = 0; w < workers; ++w) {
    const int node = t->AddNode(absl::StrCat("h0.g", w));
    MOE_RETURN_IF_ERROR(Join(t, node, kernel, absl::StrCat("lo", w), bandwidth, latency));
    p.nodes.push_back(node);
    p.host.push_back(0);
    p.local.push_back(w);
  }
  return p;
}

}  // namespace moe::sim
