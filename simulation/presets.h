// Ready-made topologies. Every accelerator (or CPU worker) is a node named "h<host>.g<local>"; switches
// are extra nodes. Links are bidirectional: a pair named "<port>.tx" (from the node nearer the
// accelerator) and "<port>.rx". Bandwidths are in bytes per second.
#ifndef MOE_SIMULATION_PRESETS_H_
#define MOE_SIMULATION_PRESETS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "simulation/topology.h"

namespace moe::sim {

// Where the accelerators of a preset are: node ids, with their host and local rank (what the
// hierarchical all-to-all takes).
struct Placement {
  std::vector<int> nodes;
  std::vector<int> host;
  std::vector<int> local;

  // Spreads a GPU-by-GPU byte matrix over all `num_nodes` nodes of the topology (switches send nothing)
  // and gives every node its host and local rank (-1 for switches), as the all-to-alls take them.
  void Expand(int num_nodes, const std::vector<std::vector<double>>& gpu_bytes, std::vector<std::vector<double>>* bytes,
              std::vector<int>* node_host, std::vector<int>* node_local) const;
};

struct ClusterShape {
  int hosts = 1;
  int gpus_per_host = 8;
  double intra_host_bandwidth = 150e9;  // per GPU, into the host's NVSwitch (or shared memory)
  Nanos intra_host_latency = 1000;
  double nic_bandwidth = 50e9;          // per GPU NIC
  Nanos nic_latency = 3000;
  int hosts_per_leaf = 4;               // fat tree only
  double spine_bandwidth = 400e9;       // fat tree only: each leaf's uplink to the spine
};

// One host: every GPU joined to an NVSwitch node (hosts is ignored: 1).
absl::StatusOr<Placement> SingleNode(const ClusterShape& shape, Topology* topology);
// Rail-optimized: NVSwitch inside each host; GPU k of every host joined to rail switch k by its NIC.
absl::StatusOr<Placement> RailOptimized(const ClusterShape& shape, Topology* topology);
// Two-level fat tree: NVSwitch inside each host; every NIC to its host's leaf switch; leaves to one spine.
absl::StatusOr<Placement> FatTree(const ClusterShape& shape, Topology* topology);
// This machine's loopback: `workers` processes exchanging through the kernel at `bandwidth` each way
// (measure it: memcpy bandwidth, or the exchange benchmark) with `latency` per message.
absl::StatusOr<Placement> Loopback(int workers, double bandwidth, Nanos latency, Topology* topology);

}  // namespace moe::sim

#endif  // MOE_SIMULATION_PRESETS_H_
