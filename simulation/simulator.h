// The discrete-event core of the capacity-planning simulator: integer nanoseconds, events ordered by
// (time, sequence number) so that ties run in scheduling order, one thread, and seeded random streams.
// The same inputs give the same outputs bit for bit.
#ifndef MOE_SIMULATION_SIMULATOR_H_
#define MOE_SIMULATION_SIMULATOR_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "common/splitmix.h"

namespace moe::sim {

using Nanos = int64_t;

// A random stream: cheap, seeded, independent per stream id.
class RandomStream {
 public:
  RandomStream(uint64_t seed, uint64_t stream_id);
  uint64_t NextU64() { return bits_.Next(); }
  double NextUniform() { return bits_.NextUniform(); }  // [0, 1)
  double NextExponential(double mean);                   // for Poisson arrivals
 private:
  SplitMix64 bits_;
};

class Simulator {
 public:
  explicit Simulator(uint64_t seed = 1) : seed_(seed) {}

  Nanos now() const { return now_; }
  uint64_t events_run() const { return events_run_; }

  // Runs `action` at absolute time `at` (>= now()). Events at the same time run in the order they were
  // scheduled.
  void At(Nanos at, std::function<void()> action);
  void After(Nanos delay, std::function<void()> action) { At(now_ + delay, std::move(action)); }

  // Runs events until none is left or the next one is later than `until`; returns events run.
  uint64_t Run(Nanos until = INT64_MAX);

  // Stream `id` of this simulation's seed.
  RandomStream Stream(uint64_t id) const { return RandomStream(seed_, id); }

 private:
  struct Entry {  // heap node; the action lives in actions_[slot]
    Nanos time;
    uint64_t sequence;
    uint32_t slot;
  };
  static bool Later(const Entry& a, const Entry& b) {
    return a.time != b.time ? a.time > b.time : a.sequence > b.sequence;
  }

  uint64_t seed_;
  Nanos now_ = 0;
  uint64_t next_sequence_ = 0;
  uint64_t events_run_ = 0;
  std::vector<Entry> heap_;
  std::vector<std::function<void()>> actions_;
  std::vector<uint32_t> free_slots_;
};

}  // namespace moe::sim

#endif  // MOE_SIMULATION_SIMULATOR_H_
