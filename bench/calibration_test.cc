// FitServingOverheads against probes the simulator itself produced from known serving costs: the fit
// must reproduce the probes and land near the costs that made them (the fit's arithmetic alone; the
// CTests moe_calibrate_* run it on a live cluster).
#include "bench/calibration.h"

#include <algorithm>

#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace moe::bench {
namespace {

using ::moe::testing::IsOk;

// A 1-worker gRPC cluster on a made-up 2-core machine serving the bundled model.
struct FitCase {
  ModelConfig config;
  sim::ModelShape shape;
  Calibration machine;

  FitCase() {
    absl::StatusOr<ModelConfig> c = ModelConfig::FromFile(std::string(MOE_SOURCE_DIR) + "/models/tiny-moe/config.json");
    EXPECT_THAT(c.status(), IsOk());
    config = *c;
    shape = ServedShape(config, "tiny-moe", DType::kBF16);
    machine.model = "tiny-moe";
    machine.cores = 2;
    machine.matmul_in_features = config.hidden_size;
    machine.matmul_out_features = config.expert_ffn_size;
    machine.kernel = {{1, 30e9}, {8, 90e9}, {64, 100e9}};
  }
  static WorkerCountCosts OneWorker() {
    WorkerCountCosts costs;
    costs.workers = 1;
    return costs;
  }
  // The probes as the simulator runs them on `truth`: one run each.
  ProbeSamples ProbesOf(const WorkerCountCosts& truth) const {
    ProbeSamples samples;
    const absl::StatusOr<sim::ClusterSpec> cluster =
        sim::ClusterSpec::FromJson(ThisMachineClusterJson(machine, truth).dump(), "truth", "");
    EXPECT_THAT(cluster.status(), IsOk());
    for (ProbeSamples::Probe& probe : samples.probes) {
      probe.shapes.answered.assign(static_cast<size_t>(std::max(48, 16 * probe.concurrency)),
                                   RequestTiming{12, kProbeMaxTokens, 0, 0});
      const absl::StatusOr<sim::SimReport> report =
          SimulateClosedLoop(config, shape, *cluster, probe.shapes, probe.concurrency, std::nullopt);
      EXPECT_THAT(report.status(), IsOk());
      ProbeFigures& run = probe.runs.emplace_back(SimulatedProbeFigures(*report));
      // The live coordinator's mean gap over its steps; the truth's curve is a line, so it is the gap at
      // the mean sequences per step.
      const double sequences_per_step = static_cast<double>(report->tokens) / static_cast<double>(report->steps);
      run.step_gap_s = static_cast<double>(cluster->StepGap(std::llround(sequences_per_step))) * 1e-9;
    }
    return samples;
  }
};

// The fit does not land on the truth exactly: with the front end's jitter (exponential draws), prompts
// coalescing into fewer prefill steps as the costs move, and requests that catch the step gap or miss
// it, the simulated figures are rough functions of the costs. On these probes (4x the live probes'
// requests, for steadier medians) it recovers the prefill costs within 12% (step) and 17% (row) and the
// intake within 11%, and reproduces every probe's decode time within 0.5%, the coordinator's TTFT
// within 15% and the clients' median TTFT within 28% (the front end is what the probes pin down
// least); the bounds below leave a little room over those.
void ExpectTheFitRecovers(const WorkerCountCosts& truth) {
  FitCase c;
  const ProbeSamples probes = c.ProbesOf(truth);
  WorkerCountCosts fitted = FitCase::OneWorker();
  ASSERT_THAT(FitServingOverheads(c.config, c.shape, c.machine, probes, &fitted), IsOk());
  ASSERT_EQ(fitted.probes.size(), probes.probes.size());
  for (const ServingProbe& p : fitted.probes) {
    EXPECT_NEAR(p.simulated.decode_s / p.measured.decode_s, 1.0, 0.02) << p.concurrency << " clients";
    EXPECT_NEAR(p.simulated.coordinator_ttft_s / p.measured.coordinator_ttft_s, 1.0, 0.18) << p.concurrency << " clients";
    EXPECT_NEAR(p.simulated.client_ttft_p50_s / p.measured.client_ttft_p50_s, 1.0, 0.33) << p.concurrency << " clients";
  }
  EXPECT_NEAR(fitted.prefill_step_overhead_s, truth.prefill_step_overhead_s, 0.15 * truth.prefill_step_overhead_s);
  EXPECT_NEAR(fitted.prefill_row_overhead_s, truth.prefill_row_overhead_s, 0.2 * truth.prefill_row_overhead_s);
  EXPECT_NEAR(fitted.request_overhead_s, truth.request_overhead_s, 0.15 * truth.request_overhead_s);
}

WorkerCountCosts KnownCosts() {
  WorkerCountCosts truth = FitCase::OneWorker();
  truth.step_overhead_curve_s = {{1, 400e-6}, {64, 400e-6 + 63 * 60e-6}};  // 400 us + 60 us a sequence
  truth.prefill_step_overhead_s = 300e-6;
  truth.prefill_row_overhead_s = 20e-6;
  truth.request_overhead_s = 200e-6;
  truth.token_delivery_curve_s = {{1, 200e-6}, {64, 200e-6 + 63 * 30e-6}};  // the way back: 200 us + 30 us a stream
  return truth;
}

TEST(CalibrationFitTest, ReproducesProbesMadeFromKnownCostsAndRecoversThePrefillCosts) { ExpectTheFitRecovers(KnownCosts()); }

// The coordinator's work between steps (measured live, an input of the fit) moves part of each step's
// period to where arriving requests still join the next step.
TEST(CalibrationFitTest, RecoversThePrefillCostsWithAStepGap) {
  WorkerCountCosts truth = KnownCosts();
  truth.step_gap_curve_s = {{1, 40e-6}, {64, 40e-6 + 63 * 35e-6}};  // 40 us + 35 us a sequence
  ExpectTheFitRecovers(truth);
}

TEST(CalibrationFitTest, RefusesAProbeWithoutRuns) {
  FitCase c;
  WorkerCountCosts costs = FitCase::OneWorker();
  EXPECT_EQ(FitServingOverheads(c.config, c.shape, c.machine, ProbeSamples(), &costs).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moe::bench
