#include "simulation/compute.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace moe::sim {

double Interpolate(const std::vector<std::pair<int64_t, double>>& points, int64_t x) {
  if (points.empty()) return 0;
  if (x <= points.front().first) return points.front().second;
  for (size_t i = 1; i < points.size(); ++i) {
    const auto& [x1, y1] = points[i];
    if (x <= x1) {
      const auto& [x0, y0] = points[i - 1];
      return y0 + (y1 - y0) * static_cast<double>(x - x0) / static_cast<double>(x1 - x0);
    }
  }
  return points.back().second;
}

double DeviceProfile::EfficiencyAt(int64_t tokens) const { return efficiency.empty() ? 1.0 : Interpolate(efficiency, tokens); }

absl::Status DeviceProfile::Validate() const {
  if (!(peak_flops > 0)) return absl::InvalidArgumentError(absl::StrCat("device '", name, "': peak_flops must be > 0"));
  if (!(memory_bandwidth > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("device '", name, "': memory_bandwidth must be > 0"));
  }
  for (size_t i = 0; i < efficiency.size(); ++i) {
    const auto& [t, e] = efficiency[i];
    if (t < 1 || !(e > 0 && e <= 1) || (i > 0 && t <= efficiency[i - 1].first)) {
      return absl::InvalidArgumentError(absl::StrCat("device '", name, "': efficiency[", i,
                                                     "] must have tokens >= 1, ascending, and a fraction in (0, 1]"));
    }
  }
  return absl::OkStatus();
}

namespace {
// A generic tensor-core curve: small batches are far from peak. To be replaced by measured curves.
const std::vector<std::pair<int64_t, double>> kGenericGpuEfficiency = {{1, 0.02}, {16, 0.25}, {128, 0.6}, {1024, 0.75}};
}  // namespace

DeviceProfile H100Profile() { return {"H100-SXM", 989e12, 3.35e12, kGenericGpuEfficiency}; }
DeviceProfile H200Profile() { return {"H200-SXM", 989e12, 4.8e12, kGenericGpuEfficiency}; }
DeviceProfile A100Profile() { return {"A100-SXM-80GB", 312e12, 2.039e12, kGenericGpuEfficiency}; }

Nanos ExpertFfnTime(const DeviceProfile& device, int64_t tokens, int64_t hidden, int64_t ffn, double bytes_per_weight) {
  if (tokens <= 0) return 0;
  const double flops = 2.0 * 3.0 * static_cast<double>(tokens) * static_cast<double>(hidden) * static_cast<double>(ffn);
  const double weight_bytes = 3.0 * static_cast<double>(hidden) * static_cast<double>(ffn) * bytes_per_weight;
  const double compute_s = flops / (device.peak_flops * device.EfficiencyAt(tokens));
  const double memory_s = weight_bytes / device.memory_bandwidth;
  return static_cast<Nanos>(std::ceil(std::max(compute_s, memory_s) * 1e9));
}

}  // namespace moe::sim
