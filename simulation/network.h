// Flow-level network model: links with latency and bandwidth; concurrent transfers share every link
// they cross max-min fairly (progressive filling, recomputed whenever a flow starts or ends). A
// transfer's last byte arrives when its data has drained at its fair rates plus its path's latency.
#ifndef MOE_SIMULATION_NETWORK_H_
#define MOE_SIMULATION_NETWORK_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "simulation/simulator.h"

namespace moe::sim {

struct LinkSpec {
  std::string name;
  double bandwidth = 0;  // bytes per second, > 0
  Nanos latency = 0;     // >= 0
};

class Network {
 public:
  explicit Network(Simulator* sim) : sim_(sim) {}

  // INVALID_ARGUMENT naming the link for a non-positive bandwidth or negative latency.
  absl::StatusOr<int> AddLink(const LinkSpec& spec);
  int num_links() const { return static_cast<int>(links_.size()); }
  const LinkSpec& link(int id) const { return links_[id].spec; }

  // Starts moving `bytes` along `path` (link ids, in order; may be empty for a local copy); `done` runs
  // when the last byte has arrived. INVALID_ARGUMENT for an unknown link or negative bytes.
  absl::Status StartFlow(const std::vector<int>& path, double bytes, std::function<void()> done);

  int active_flows() const { return static_cast<int>(flows_.size()); }
  // Bytes that have crossed `link` so far (for utilization: divide by bandwidth x elapsed time).
  double carried_bytes(int link) const { return links_[link].carried; }

 private:
  struct Link {
    LinkSpec spec;
    double carried = 0;
  };
  struct Flow {
    std::vector<int> path;
    double remaining = 0;  // bytes not yet sent
    double rate = 0;       // bytes per second, from the last reallocation
    uint64_t version = 0;  // bumps on every reallocation; a completion event of an older one is stale
    Nanos latency = 0;
    std::function<void()> done;
  };

  void Advance();     // drains every active flow up to now
  void Reallocate();  // max-min fair rates, and new completion events
  void OnDrained(uint64_t id, uint64_t version);

  Simulator* sim_;
  std::vector<Link> links_;
  std::map<uint64_t, Flow> flows_;  // ordered: the same inputs give the same event order
  uint64_t next_flow_id_ = 0;
  Nanos last_advance_ = 0;
};

}  // namespace moe::sim

#endif  // MOE_SIMULATION_NETWORK_H_
