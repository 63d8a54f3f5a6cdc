// Speed of the simulator's discrete-event core (issue 7 target: >= 5 million events/s on one core).
// Each event reschedules itself a pseudo-random delay ahead, keeping `pending` events in the queue, as
// a busy cluster simulation does.
//   build/bin/simulation_bench
#include <cstdint>

#include "benchmark/benchmark.h"
#include "simulation/simulator.h"

namespace {

void BM_EventCore(benchmark::State& state) {
  const int64_t pending = state.range(0);
  for (auto _ : state) {
    state.PauseTiming();
    moe::sim::Simulator sim(1);
    moe::sim::RandomStream rng = sim.Stream(0);
    int64_t budget = 2'000'000;
    std::function<void()> tick;
    tick = [&] {
      if (--budget > 0) sim.After(static_cast<moe::sim::Nanos>(1 + (rng.NextU64() & 1023)), tick);
    };
    for (int64_t i = 0; i < pending; ++i) sim.At(i, tick);
    state.ResumeTiming();
    benchmark::DoNotOptimize(sim.Run());
    state.SetItemsProcessed(state.items_processed() + static_cast<int64_t>(sim.events_run()));
  }
}
BENCHMARK(BM_EventCore)->Arg(16)->Arg(1024)->Arg(65536)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
