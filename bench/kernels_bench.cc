// Expert FFN throughput (SwiGLU: gate_up then down) for token batches 1..512, F32 and BF16 weights,
// beside this machine's FMA peak measured in the same run.
//   build/bin/kernels_bench [--hidden 1024 --ffn 3584] [Google Benchmark flags]
// Each row reports GFLOP/s and pct_of_peak (of the multithreaded FMA peak at the same SIMD level).
#include <cstring>
#include <iostream>
#include <random>

#include "bench/machine_limits.h"
#include "benchmark/benchmark.h"
#include "engine/expert_dispatch.h"
#include "kernels/kernels.h"

namespace moe::bench {
namespace {

int64_t g_hidden = 1024, g_ffn = 3584;
double g_peak_gflops = 0;

ThreadPool& Pool() {
  static ThreadPool pool(0);
  return pool;
}

FfnWeights MakeExpert(DType storage) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-0.05f, 0.05f);
  std::vector<float> gate(g_ffn * g_hidden), up(g_ffn * g_hidden), down(g_hidden * g_ffn);
  for (auto* v : {&gate, &up, &down}) for (float& x : *v) x = d(rng);
  FfnWeights w;
  const MatrixView gate_up[] = {{gate.data(), DType::kF32, g_ffn, g_hidden}, {up.data(), DType::kF32, g_ffn, g_hidden}};
  w.gate_up = PackedMatrix::Pack(gate_up, storage);
  w.down = PackedMatrix::Pack(MatrixView{down.data(), DType::kF32, g_hidden, g_ffn}, storage);
  return w;
}

void BM_ExpertFfn(benchmark::State& state, DType storage) {
  static FfnWeights f32 = MakeExpert(DType::kF32), bf16 = MakeExpert(DType::kBF16);
  const FfnWeights& w = storage == DType::kF32 ? f32 : bf16;
  const int64_t tokens = state.range(0);
  std::vector<float> x(tokens * g_hidden, 0.01f), out(tokens * g_hidden), scratch;
  for (auto _ : state) {
    RunFfn(w, x.data(), tokens, out.data(), &scratch, &Pool());
    benchmark::DoNotOptimize(out.data());
  }
  const double flops = 2.0 * tokens * (3.0 * g_hidden * g_ffn);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_GFLOP/s"] = g_peak_gflops;
  state.counters["tokens"] = static_cast<double>(tokens);
}

void Register() {
  for (DType storage : {DType::kF32, DType::kBF16}) {
    auto* b = benchmark::RegisterBenchmark(storage == DType::kF32 ? "ExpertFfn/F32" : "ExpertFfn/BF16",
                                           [storage](benchmark::State& s) { BM_ExpertFfn(s, storage); });
    for (int t : {1, 2, 4, 8, 16, 32, 64, 128, 256, 512}) b->Arg(t);
    b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.3);
  }
}

// Adds pct_of_peak to every row and prints the peak first.
class PeakReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    std::vector<Run> copy = runs;
    for (Run& r : copy) {
      auto it = r.counters.find("GFLOP/s");
      if (it != r.counters.end()) {
        // Counters reach the reporter already finalized: GFLOP/s is a rate here.
        r.counters["pct_of_peak"] = benchmark::Counter(100.0 * it->second.value / g_peak_gflops);
      }
    }
    ConsoleReporter::ReportRuns(copy);
  }
};

}  // namespace
}  // namespace moe::bench

int main(int argc, char** argv) {
  using namespace moe::bench;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--hidden") == 0) g_hidden = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--ffn") == 0) g_ffn = std::atoll(argv[i + 1]);
  }
  benchmark::Initialize(&argc, argv);
  const moe::SimdLevel level = moe::BestSimdLevel();
  g_peak_gflops = MeasureFmaPeakGflops(Pool(), level);
  std::cout << "machine: " << Pool().num_threads() << " threads, SIMD " << moe::SimdLevelName(level)
            << ", FMA peak " << g_peak_gflops << " GFLOP/s (F32, measured now)\n"
            << "expert: hidden " << g_hidden << ", ffn " << g_ffn << "\n";
  Register();
  PeakReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
