// Roofline compute model: how long a device takes for an expert FFN or an attention block, from its
// peak FLOP/s, its memory bandwidth and an efficiency curve by batch size (small batches reach a smaller
// share of peak).
#ifndef MOE_SIMULATION_COMPUTE_H_
#define MOE_SIMULATION_COMPUTE_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "simulation/simulator.h"

namespace moe::sim {

// A curve given at points (x, y), ascending in x: linear in between, flat outside; 0 when empty.
double Interpolate(const std::vector<std::pair<int64_t, double>>& points, int64_t x);

struct DeviceProfile {
  std::string name;
  double peak_flops = 0;        // dense FLOP/s at the weights' precision
  double memory_bandwidth = 0;  // bytes/s the weights stream at
  // (tokens in the batch, fraction of peak reached), ascending in tokens; linear in between, flat
  // outside. Empty: 1.0 everywhere.
  std::vector<std::pair<int64_t, double>> efficiency;

  double EfficiencyAt(int64_t tokens) const;
  // INVALID_ARGUMENT naming the field for non-positive peaks or a malformed curve.
  absl::Status Validate() const;
};

// Published peaks (dense BF16 tensor-core FLOP/s, HBM bandwidth), with a generic efficiency curve.
DeviceProfile H100Profile();
DeviceProfile H200Profile();
DeviceProfile A100Profile();

// One SwiGLU expert (three hidden x ffn matrices) on `tokens` tokens: max(compute, weight streaming),
// in whole nanoseconds (rounded up). Zero tokens take no time (the expert is not run).
Nanos ExpertFfnTime(const DeviceProfile& device, int64_t tokens, int64_t hidden, int64_t ffn, double bytes_per_weight);

}  // namespace moe::sim

#endif  // MOE_SIMULATION_COMPUTE_H_
