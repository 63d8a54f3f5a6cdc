#include "simulation/simulator.h"

#include <algorithm>
#include <cassert>
#include <cmath>

namespace moe::sim {

RandomStream::RandomStream(uint64_t seed, uint64_t stream_id)
    : bits_(seed * 0x9E3779B97F4A7C15ull ^ (stream_id + 1) * 0xD1B54A32D192ED03ull) {}

double RandomStream::NextExponential(double mean) { return -mean * std::log1p(-NextUniform()); }

void Simulator::At(Nanos at, std::function<void()> action) {
  assert(at >= now_ && "an event cannot be scheduled in the past");
  uint32_t slot;
  if (free_slots_.empty()) {
    slot = static_cast<uint32_t>(actions_.size());
    actions_.push_back(std::move(action));
  } else {
    slot = free_slots_.back();
    free_slots_.pop_back();
    actions_[slot] = std::move(action);
  }
  heap_.push_back({std::max(at, now_), next_sequence_++, slot});
  std::push_heap(heap_.begin(), heap_.end(), Later);
}

uint64_t Simulator::Run(Nanos until) {
  uint64_t ran = 0;
  while (!heap_.empty() && heap_.front().time <= until) {
    std::pop_heap(heap_.begin(), heap_.end(), Later);
    const Entry e = heap_.back();
    heap_.pop_back();
    now_ = e.time;
    std::function<void()> action = std::move(actions_[e.slot]);
    free_slots_.push_back(e.slot);
    action();
    ++ran;
  }
  events_run_ += ran;
  return ran;
}

}  // namespace moe::sim
