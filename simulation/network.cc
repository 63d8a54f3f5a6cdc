#include "simulation/network.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace moe::sim {

absl::StatusOr<int> Network::AddLink(const LinkSpec& spec) {
  if (!(spec.bandwidth > 0) || !std::isfinite(spec.bandwidth)) {
    return absl::InvalidArgumentError(absl::StrCat("link '", spec.name, "': bandwidth must be a positive number of bytes/s"));
  }
  if (spec.latency < 0) return absl::InvalidArgumentError(absl::StrCat("link '", spec.name, "': latency must be >= 0"));
  links_.push_back({spec, 0});
  return static_cast<int>(links_.size() - 1);
}

absl::Status Network::StartFlow(const std::vector<int>& path, double bytes, std::function<void()> done) {
  if (!(bytes >= 0)) return absl::InvalidArgumentError("a flow cannot carry a negative number of bytes");
  Nanos latency = 0;
  for (int l : path) {
    if (l < 0 || l >= num_links()) return absl::InvalidArgumentError(absl::StrCat("flow path: no link ", l));
    latency += links_[l].spec.latency;
  }
  if (path.empty() || bytes == 0) {  // nothing shares a link: only the latency
    sim_->After(latency, std::move(done));
    return absl::OkStatus();
  }
  Advance();
  Flow f;
  f.path = path;
  f.remaining = bytes;
  f.latency = latency;
  f.done = std::move(done);
  flows_.emplace(next_flow_id_++, std::move(f));
  Reallocate();
  return absl::OkStatus();
}

void Network::Advance() {
  const double dt = static_cast<double>(sim_->now() - last_advance_) * 1e-9;
  last_advance_ = sim_->now();
  if (dt <= 0) return;
  for (auto& [id, f] : flows_) {
    const double sent = std::min(f.remaining, f.rate * dt);
    f.remaining -= sent;
    for (int l : f.path) links_[l].carried += sent;
  }
}

void Network::Reallocate() {
  // Progressive filling: repeatedly find the link whose remaining capacity split among its unfrozen
  // flows is smallest, give that share to those flows, and freeze them.
  std::vector<double> capacity(links_.size());
  std::vector<int> unfrozen_on(links_.size(), 0);
  for (size_t l = 0; l < links_.size(); ++l) capacity[l] = links_[l].spec.bandwidth;
  std::vector<Flow*> open;
  for (auto& [id, f] : flows_) {
    open.push_back(&f);
    for (int l : f.path) ++unfrozen_on[l];
  }
  while (!open.empty()) {
    int bottleneck = -1;
    double share = std::numeric_limits<double>::infinity();
    for (size_t l = 0; l < links_.size(); ++l) {
      if (unfrozen_on[l] == 0) continue;
      const double s = capacity[l] / unfrozen_on[l];
      if (s < share) {
        share = s;
        bottleneck = static_cast<int>(l);
      }
    }
    std::vector<Flow*> still_open;
    for (Flow* f : open) {
      if (std::find(f->path.begin(), f->path.end(), bottleneck) == f->path.end()) {
        still_open.push_back(f);
        continue;
      }
      f->rate = share;
      for (int l : f->path) {
        capacity[l] = std::max(0.0, capacity[l] - share);
        --unfrozen_on[l];
      }
    }
    open.swap(still_open);
  }
  for (auto& [id, f] : flows_) {
    ++f.version;
    const Nanos drain = static_cast<Nanos>(std::ceil(f.remaining / f.rate * 1e9));
    sim_->After(drain, [this, id = id, v = f.version] { OnDrained(id, v); });
  }
}

void Network::OnDrained(uint64_t id, uint64_t version) {
  auto it = flows_.find(id);
  if (it == flows_.end() || it->second.version != version) return;  // rates changed since
  Advance();
  Flow& f = it->second;
  for (int l : f.path) links_[l].carried += f.remaining;  // the rounding remainder
  std::function<void()> done = std::move(f.done);
  const Nanos latency = f.latency;
  flows_.erase(it);
  Reallocate();
  sim_->After(latency, std::move(done));
}

}  // namespace moe::sim
