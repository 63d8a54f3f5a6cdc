// The serving model against cases computed by hand, flow and fluid side by side, and its bad-input errors.
#include <fstream>
#include <string>

#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "gmock/gmock.h"
#include "simulation/planner.h"
#include "simulation/report.h"
#include "simulation/serving.h"
#include "simulation/workload.h"

namespace moe::sim {
namespace {

using ::moe::testing::IsOk;
using ::moe::testing::StatusIs;

// hidden 64, expert ffn 128, 2 MoE layers, 4 heads x 16 (2 KV heads), vocab 100.
ModelConfig TinyConfig(int experts, int top_k) {
  auto c = ModelConfig::FromJson(
      absl::StrCat(R"({"model_type":"mixtral","vocab_size":100,"hidden_size":64,"intermediate_size":128,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"num_local_experts":)", experts,
                   R"(,"num_experts_per_tok":)", top_k, R"(,"max_position_embeddings":512,"eos_token_id":2})"),
      "tiny");
  EXPECT_THAT(c.status(), IsOk());
  return *c;
}

struct Case {
  ModelConfig config;
  ModelShape shape;
  ExpertPopularity popularity;
  ClusterSpec cluster;
  WorkloadSpec workload;

  Case(int experts, int top_k, int workers, Fidelity fidelity) : config(TinyConfig(experts, top_k)) {
    shape = ModelShape::FromConfig(config, "tiny", /*bytes_per_weight=*/2, /*activation_bytes=*/2);
    popularity = ExpertPopularity::Zipf(shape, 0, 1);
    // 1.024e12 FLOP/s: one expert token (6 x 64 x 128 FLOPs) takes exactly 48 ns; memory never binds.
    cluster.device = {"test", 1.024e12, 1e18, {}};
    cluster.topology = "loopback";
    cluster.shape.intra_host_bandwidth = 1e9;  // 1 byte per ns
    cluster.shape.intra_host_latency = 0;
    cluster.workers = workers;
    cluster.step_overhead = 1000;
    cluster.fidelity = fidelity;
    workload.concurrency = 1;
    workload.requests = 1;
    workload.prompt_min = workload.prompt_max = 4;
    workload.output_min = workload.output_max = 3;
  }
  absl::StatusOr<SimReport> Run() {
    auto requests = GenerateRequests(workload);
    if (!requests.ok()) return requests.status();
    return SimulateServing(config, shape, popularity, cluster, workload, *requests);
  }
};

class BothFidelities : public ::testing::TestWithParam<Fidelity> {};

// One worker, one request (prompt 4, 3 tokens), 4 experts top-2, uniform routing. Per layer:
//   prefill attention: 4 rows x 2 x (2x64x64 + 2x64x32 + 64x4) + 4 x (1+2+3+4) x 64 = 102912 FLOPs -> 101 ns
//   prefill experts: 8 token-expert pairs x 48 ns = 384 ns (ceil per expert: 2 tokens each, exact)
//   decode attention: 25088 + 4 x 5 x 64 = 26368 FLOPs -> 26 ns (then 26624 -> 26 ns); experts 2 x 48 = 96 ns
// LM head: 2 x 64 x 100 = 12800 FLOPs -> 13 ns; step overhead 1000 ns.
//   TTFT = 2 x (101 + 384) + 13 + 1000 = 1983 ns; each later token: 2 x (26 + 96) + 13 + 1000 = 1257 ns.
TEST_P(BothFidelities, OneWorkerStepTimesAreTheRooflineByHand) {
  Case c(4, 2, 1, GetParam());
  auto report = c.Run();
  ASSERT_THAT(report.status(), IsOk());
  EXPECT_EQ(report->completed, 1);
  EXPECT_EQ(report->tokens, 3);
  EXPECT_EQ(report->steps, 3);
  EXPECT_NEAR(report->makespan_s, (1983 + 2 * 1257) * 1e-9, 1e-15);
  EXPECT_NEAR(report->ttft.Percentile(0.5), 1983e-9, 1983e-9 * 0.011);  // histogram: 1% buckets
  EXPECT_NEAR(report->inter_token.Percentile(0.5), 1257e-9, 1257e-9 * 0.011);
  EXPECT_EQ(report->all2all_bytes, 0);
  EXPECT_EQ(report->layers_per_token, 2);
}

// Two workers on 1 GB/s loopback ports, 2 experts top-2 (so every token needs both workers), one request
// of 4 prompt tokens, 1 output token, on worker 0. Per layer: dispatch 0 -> 1 carries a header (8) and 4
// records of 4 + 8x2 + 2x64 = 148 bytes: 600 ns (1 -> 0: a bare header, 8 ns, on other links); the
// combine carries 4 x 128 = 512 bytes back: 512 ns. Compute rounds up to whole nanoseconds (a few ns).
TEST_P(BothFidelities, TwoWorkerExchangeTimesAndBytesByHand) {
  Case c(2, 2, 2, GetParam());
  c.cluster.device.peak_flops = 1e18;  // compute ~free: each phase rounds up to 1 ns
  c.cluster.step_overhead = 0;
  c.workload.output_min = c.workload.output_max = 1;
  auto report = c.Run();
  ASSERT_THAT(report.status(), IsOk());
  EXPECT_EQ(report->all2all_bytes, 2 * (600 + 8 + 512));
  EXPECT_GE(report->makespan_s, 2 * (600 + 512) * 1e-9);
  EXPECT_LE(report->makespan_s, (2 * (600 + 512) + 16) * 1e-9);
}

// max_running 1: the second of two simultaneous requests waits for the first (the coordinator's own
// admission code), so the pair takes twice one request's 4497 ns.
TEST_P(BothFidelities, AdmissionQueuesBeyondTheRunningLimit) {
  Case c(4, 2, 1, GetParam());
  c.cluster.batch.max_running = 1;
  c.workload.concurrency = 2;
  c.workload.requests = 2;
  auto report = c.Run();
  ASSERT_THAT(report.status(), IsOk());
  EXPECT_EQ(report->completed, 2);
  EXPECT_NEAR(report->makespan_s, 2 * 4497e-9, 1e-15);
  EXPECT_NEAR(report->ttft.Percentile(0.99), (4497 + 1983) * 1e-9, (4497 + 1983) * 1e-9 * 0.011);
}

// The per-sequence cost is paid once per sequence in each step: one request alone pays it 3 times (one
// per step), so its 3 steps take 300 ns more than the hand-computed 4497 ns.
TEST_P(BothFidelities, SequenceOverheadIsPaidPerSequencePerStep) {
  Case c(4, 2, 1, GetParam());
  c.cluster.sequence_overhead = 100;
  auto report = c.Run();
  ASSERT_THAT(report.status(), IsOk());
  EXPECT_NEAR(report->makespan_s, (4497 + 3 * 100) * 1e-9, 1e-15);
  EXPECT_NEAR(report->ttft.Percentile(0.5), (1983 + 100) * 1e-9, (1983 + 100) * 1e-9 * 0.011);
}

// The prefill costs are paid by the step that prefills: once per step, and once per row beyond each
// sequence's first (the 4-token prompt: 3 rows); the decode steps pay neither.
TEST_P(BothFidelities, PrefillOverheadsArePaidByThePrefillStep) {
  Case c(4, 2, 1, GetParam());
  c.cluster.prefill_step_overhead = 500;
  c.cluster.prefill_row_overhead = 100;
  auto report = c.Run();
  ASSERT_THAT(report.status(), IsOk());
  EXPECT_NEAR(report->makespan_s, (4497 + 500 + 3 * 100) * 1e-9, 1e-15);
  EXPECT_NEAR(report->ttft.Percentile(0.5), (1983 + 800) * 1e-9, (1983 + 800) * 1e-9 * 0.011);
  EXPECT_NEAR(report->inter_token.Percentile(0.5), 1257e-9, 1257e-9 * 0.011);
  EXPECT_EQ(report->prefill_steps, 1);
  EXPECT_EQ(report->prefill_rows, 3);
  EXPECT_NEAR(report->prefill_step_s, (1983 + 800) * 1e-9, 1e-15);  // the steps' own times, apart
  EXPECT_NEAR(report->decode_step_s, 2 * 1257e-9, 1e-15);
}

// Each token reaches its client token_delivery_curve(sequences in its step) after the step; the step
// does not wait. One sequence per step: every token arrives 750 ns late (the curve at 1 sequence,
// between its points at 0 and 2), the coordinator's TTFT does not move, the inter-token gaps are
// unchanged, and a closed-loop client sends its next request when the last token arrives, so three
// requests in turn take 3 x (4497 + 750) ns.
TEST_P(BothFidelities, TokenDeliveryDelaysEveryTokenAndTheClosedLoop) {
  Case c(4, 2, 1, GetParam());
  c.cluster.token_delivery_curve = {{0, 700}, {2, 800}, {10, 5000}};
  c.workload.requests = 3;
  auto report = c.Run();
  ASSERT_THAT(report.status(), IsOk());
  EXPECT_NEAR(report->ttft.Percentile(1), (1983 + 750) * 1e-9, (1983 + 750) * 1e-9 * 0.011);
  EXPECT_NEAR(report->coordinator_ttft.Percentile(1), 1983e-9, 1983e-9 * 0.011);
  EXPECT_NEAR(report->inter_token.Percentile(0.5), 1257e-9, 1257e-9 * 0.011);
  EXPECT_NEAR(report->makespan_s, 3 * (4497 + 750) * 1e-9, 1e-15);
}

// With front_end_jitter the delays are random draws of their means: over 200 requests from one client
// the TTFT exceeds the coordinator's by 750 ns on average, spread out, never out of order within a
// stream; the intake (500 ns) adds its own draws; the closed loop waits for each last token. One stage
// (exponential draws) spreads the TTFT wider than the default two (Erlang-2: the same mean, a
// coefficient of variation of 0.71 instead of 1).
TEST_P(BothFidelities, FrontEndJitterDrawsTheDelaysAroundTheirMeans) {
  double spread[2] = {0, 0};  // TTFT p90 - p10, by stages 1 and 2
  for (const int stages : {1, 2}) {
    Case c(4, 2, 1, GetParam());
    c.cluster.token_delivery_curve = {{1, 750}};
    c.cluster.request_overhead = 500;
    c.cluster.front_end_jitter = true;
    c.cluster.front_end_jitter_stages = stages;
    c.workload.requests = 200;
    auto report = c.Run();
    ASSERT_THAT(report.status(), IsOk());
    EXPECT_NEAR(report->coordinator_ttft.Percentile(1), 1983e-9, 1983e-9 * 0.011);
    EXPECT_NEAR(report->ttft.MeanSeconds() - report->coordinator_ttft.MeanSeconds(), 1250e-9, 1250e-9 * 0.15);
    spread[stages - 1] = report->ttft.Percentile(0.9) - report->ttft.Percentile(0.1);
    EXPECT_GT(spread[stages - 1], 700e-9);  // spread, not a constant
    EXPECT_GE(report->inter_token.Percentile(0), 0);
    EXPECT_NEAR(report->inter_token.MeanSeconds(), 1257e-9, 1257e-9 * 0.15);
    EXPECT_GT(report->makespan_s, 200 * (4497 + 500 + 750) * 1e-9 * 0.85);
    EXPECT_LT(report->makespan_s, 200 * (4497 + 500 + 750) * 1e-9 * 1.15);
  }
  EXPECT_GT(spread[0], spread[1] * 1.2);
}

// A finished stream closes stream_close_curve after its last token, a replica's closes one at a time,
// and a closed-loop client sends its next request when its stream has closed. One client, two requests
// in turn: the second is sent 500 ns after the first's last token (4497), so the last token comes at
// 4497 + 500 + 4497. Three clients whose answers end in the same step: their streams close 500, 1000
// and 1500 ns after it.
TEST_P(BothFidelities, StreamsCloseOneAtATimeBeforeTheClientsNextRequest) {
  Case in_turn(4, 2, 1, GetParam());
  in_turn.cluster.stream_close_curve = {{1, 500}};
  in_turn.workload.requests = 2;
  auto report = in_turn.Run();
  ASSERT_THAT(report.status(), IsOk());
  EXPECT_NEAR(report->makespan_s, (4497 + 500 + 4497) * 1e-9, 1e-15);
  EXPECT_NEAR(report->stream_close.MeanSeconds(), 500e-9, 1e-15);
  EXPECT_NEAR(report->end_to_end.Percentile(1), (4497 + 500) * 1e-9, (4497 + 500) * 1e-9 * 0.011);

  Case together(4, 2, 1, GetParam());
  together.cluster.stream_close_curve = {{1, 500}};
  together.workload.concurrency = together.workload.requests = 3;
  report = together.Run();
  ASSERT_THAT(report.status(), IsOk());
  EXPECT_NEAR(report->stream_close.MeanSeconds(), 1000e-9, 1e-15);
  EXPECT_NEAR(report->stream_close.Percentile(0), 500e-9, 500e-9 * 0.011);
  EXPECT_NEAR(report->stream_close.Percentile(1), 1500e-9, 1500e-9 * 0.011);
}

// A measured step-overhead curve replaces step_overhead + sequence_overhead x sequences: at one
// sequence per step it is 1000 + 200 ns (between its points at 0 and 2), not the 1000 of the fixture.
TEST_P(BothFidelities, StepOverheadCurveReplacesTheLinearCost) {
  Case c(4, 2, 1, GetParam());
  c.cluster.step_overhead = 0;
  c.cluster.step_overhead_curve = {{0, 1100}, {2, 1300}};
  auto report = c.Run();
  ASSERT_THAT(report.status(), IsOk());
  EXPECT_NEAR(report->makespan_s, (4497 + 3 * 200) * 1e-9, 1e-15);
}

// The coordinator's work between steps (step_gap_curve: 400 ns at one sequence) lengthens every step's
// period but not a step itself, and a request that reaches the queue during it waits only for its end.
// One client, two requests in turn, each taken in 300 ns (request_overhead): the first is admitted at
// 300 and its tokens come at 2283, 3940 and 5597 (1983, then 400 + 1257 twice); the second is sent at
// 5597, queued at 5897 and admitted when the gap ends, at 5997: its first token at 7980 (TTFT 2383, the
// coordinator's own 2083), its last at 11294.
TEST_P(BothFidelities, StepGapSeparatesStepsAndAdmitsWhatArrivesDuringIt) {
  Case c(4, 2, 1, GetParam());
  c.cluster.step_gap_curve = {{1, 400}};
  c.cluster.request_overhead = 300;
  c.workload.requests = 2;
  auto report = c.Run();
  ASSERT_THAT(report.status(), IsOk());
  EXPECT_EQ(report->completed, 2);
  EXPECT_NEAR(report->makespan_s, 11294e-9, 1e-15);
  EXPECT_NEAR(report->inter_token.Percentile(0.5), 1657e-9, 1657e-9 * 0.011);
  EXPECT_NEAR(report->ttft.Percentile(0), 2283e-9, 2283e-9 * 0.011);
  EXPECT_NEAR(report->ttft.Percentile(1), 2383e-9, 2383e-9 * 0.011);
  EXPECT_NEAR(report->coordinator_ttft.Percentile(1), 2083e-9, 2083e-9 * 0.011);
}

// The request's trip to the coordinator delays its first step: TTFT and the makespan grow by exactly that.
TEST_P(BothFidelities, RequestOverheadDelaysTheFirstStep) {
  Case c(4, 2, 1, GetParam());
  c.cluster.request_overhead = 500;
  auto report = c.Run();
  ASSERT_THAT(report.status(), IsOk());
  EXPECT_NEAR(report->makespan_s, (4497 + 500) * 1e-9, 1e-15);
  EXPECT_NEAR(report->ttft.Percentile(0.5), (1983 + 500) * 1e-9, (1983 + 500) * 1e-9 * 0.011);
}

// Requests that arrive together are taken in one at a time: with an intake far slower than a step,
// three simultaneous requests get their first tokens about 1, 2 and 3 intakes after their send.
TEST_P(BothFidelities, RequestsArrivingTogetherQueueForTheCoordinatorsIntake) {
  Case c(4, 2, 1, GetParam());
  c.cluster.request_overhead = 100000;
  c.workload.requests = 3;
  c.workload.concurrency = 3;
  auto report = c.Run();
  ASSERT_THAT(report.status(), IsOk());
  EXPECT_GE(report->ttft.Percentile(0), 100000e-9);
  EXPECT_LT(report->ttft.Percentile(0), 110000e-9);
  EXPECT_GE(report->ttft.Percentile(1), 300000e-9);
  EXPECT_LT(report->ttft.Percentile(1), 310000e-9);
}

// A task whose expert map lives on its home worker sends nothing but message headers.
TEST_P(BothFidelities, HomeTaskMapsKeepTokensOnTheirWorker) {
  Case c(8, 2, 2, GetParam());
  c.workload.tasks = {{"copy", 1.0, 0.5, 1.0}};
  c.workload.requests = 4;
  c.workload.concurrency = 4;
  auto report = c.Run();
  ASSERT_THAT(report.status(), IsOk());
  EXPECT_EQ(report->completed, 4);
  // Each step, each MoE layer: two bare dispatch headers (8 bytes each way), empty combines.
  EXPECT_EQ(report->all2all_bytes, static_cast<double>(report->steps) * 2 * 2 * 8);
  for (const WorkerReport& w : report->workers) {
    EXPECT_EQ(w.expert_tokens, w.rank == 0 ? 4 * (4 + 2) * 2 * 2 : 0) << "rank " << w.rank;  // all on home rank 0
  }
}

// host_cores: workers share a host's cores only while they compute at once. Two workers, 2 experts
// top-2, one request (prompt 4, 3 tokens) on worker 0: attention runs on worker 0 alone (a core of its
// own), but both workers run an expert for every token, so on one core each expert phase takes twice
// its 4 x 48 = 192 ns (prefill) and 48 ns (each decode step), on the critical path in both layers:
// 2 x (192 + 48 + 48) = 576 ns more. A home task map keeps every row on worker 0: nothing is shared.
TEST_P(BothFidelities, SharedHostCoresStretchOnlyThePhasesThatOverlap) {
  Case own(2, 2, 2, GetParam());
  Case shared = own;
  shared.cluster.host_cores = 1;
  auto a = own.Run(), b = shared.Run();
  ASSERT_THAT(a.status(), IsOk());
  ASSERT_THAT(b.status(), IsOk());
  EXPECT_NEAR(b->makespan_s - a->makespan_s, 576e-9, 1e-15);

  Case home_own(8, 2, 2, GetParam());
  home_own.workload.tasks = {{"copy", 1.0, 0.5, 1.0}};
  home_own.workload.requests = home_own.workload.concurrency = 4;
  Case home_shared = home_own;
  home_shared.cluster.host_cores = 1;
  auto c = home_own.Run(), d = home_shared.Run();
  ASSERT_THAT(c.status(), IsOk());
  ASSERT_THAT(d.status(), IsOk());
  EXPECT_EQ(d->makespan_s, c->makespan_s);

  Case spread = own;  // two requests, one per worker: attention overlaps too
  spread.workload.requests = spread.workload.concurrency = 2;
  Case spread_two_cores = spread, spread_one_core = spread;
  spread_two_cores.cluster.host_cores = 2;
  spread_one_core.cluster.host_cores = 1;
  auto e = spread.Run(), f = spread_two_cores.Run(), g = spread_one_core.Run();
  ASSERT_THAT(e.status(), IsOk());
  ASSERT_THAT(f.status(), IsOk());
  ASSERT_THAT(g.status(), IsOk());
  EXPECT_EQ(f->makespan_s, e->makespan_s);  // as many cores as workers: as if each had its own
  EXPECT_GT(g->makespan_s - e->makespan_s, 576e-9);  // attention and the LM head stretch too
}

// A map whose top-2 slots always merge (experts_per_token 1) runs one expert call per token and layer:
// half the token-expert pairs of the same map without it, and less time; outside [1, top_k] it is refused.
TEST_P(BothFidelities, MergedSlotsCutTheExpertCallsOfAMap) {
  Case two(8, 2, 2, GetParam());
  two.workload.tasks = {{"copy", 1.0, 0.5, 1.0}};
  two.workload.requests = two.workload.concurrency = 4;
  Case one = two;
  one.workload.tasks[0].experts_per_token = 1;
  auto a = two.Run(), b = one.Run();
  ASSERT_THAT(a.status(), IsOk());
  ASSERT_THAT(b.status(), IsOk());
  EXPECT_EQ(a->workers[0].expert_tokens, 4 * (4 + 2) * 2 * 2);  // rows x layers x 2 experts, all on home rank 0
  EXPECT_EQ(b->workers[0].expert_tokens, 4 * (4 + 2) * 2 * 1);
  EXPECT_LT(b->makespan_s, a->makespan_s);
  one.workload.tasks[0].experts_per_token = 3;
  EXPECT_THAT(one.Run().status(), StatusIs(absl::StatusCode::kInvalidArgument, "experts_per_token 3 is outside [1, top_k 2]"));
}

// Dr.LLM: tokens of a request with a layer router run half the layers, and decode gets faster.
TEST_P(BothFidelities, LayerSkippingCutsLayersAndLatency) {
  Case full(4, 2, 1, GetParam());
  full.cluster.step_overhead = 0;
  full.workload.output_min = full.workload.output_max = 64;
  Case skip = full;
  skip.workload.tasks = {{"skim", 1.0, 1.0, 0.5}};
  auto a = full.Run(), b = skip.Run();
  ASSERT_THAT(a.status(), IsOk());
  ASSERT_THAT(b.status(), IsOk());
  EXPECT_EQ(a->layers_per_token, 2);
  EXPECT_EQ(b->layers_per_token, 1);
  EXPECT_LT(b->inter_token.MeanSeconds(), 0.9 * a->inter_token.MeanSeconds()) << ReportSummary(*a) << ReportSummary(*b);
}

TEST_P(BothFidelities, SameInputsSameReportBitForBit) {
  Case c(8, 2, 4, GetParam());
  c.workload.concurrency = 0;
  c.workload.rate = 2e5;
  c.workload.duration_s = 2e-4;
  c.workload.zipf = 1.0;
  c.popularity = ExpertPopularity::Zipf(c.shape, 1.0, 3);
  auto a = c.Run(), b = c.Run();
  ASSERT_THAT(a.status(), IsOk());
  ASSERT_THAT(b.status(), IsOk());
  EXPECT_GT(a->completed, 10);
  EXPECT_EQ(ReportJson(*a).dump(), ReportJson(*b).dump());
}

INSTANTIATE_TEST_SUITE_P(Fidelity, BothFidelities, ::testing::Values(Fidelity::kFlow, Fidelity::kFluid),
                         [](const auto& info) { return info.param == Fidelity::kFlow ? "Flow" : "Fluid"; });

// Fluid tracks flow on uniform routing with batches large enough for expected routing to hold. Under
// skew it is optimistic: in flow, workers that finish early send their combine replies (and their next
// layer's dispatch) into the busy worker's ports while it still receives, which the fluid model's
// phase-by-phase maxima do not see (see serving.h).
TEST(ServingTest, FluidTracksFlowOnUniformPrefillAndIsOptimisticUnderSkew) {
  Case flow(8, 2, 4, Fidelity::kFlow);
  flow.cluster.device.peak_flops = 1e13;
  flow.workload.concurrency = 64;
  flow.workload.requests = 256;
  flow.workload.prompt_min = flow.workload.prompt_max = 32;
  flow.workload.output_min = flow.workload.output_max = 1;
  Case fluid = flow;
  fluid.cluster.fidelity = Fidelity::kFluid;
  auto a = flow.Run(), b = fluid.Run();
  ASSERT_THAT(a.status(), IsOk());
  ASSERT_THAT(b.status(), IsOk());
  EXPECT_NEAR(b->makespan_s / a->makespan_s, 1.0, 0.05);
  EXPECT_NEAR(b->all2all_bytes / a->all2all_bytes, 1.0, 0.03);
  flow.popularity = fluid.popularity = ExpertPopularity::Zipf(flow.shape, 0.8, 5);
  auto c = flow.Run(), d = fluid.Run();
  ASSERT_THAT(c.status(), IsOk());
  ASSERT_THAT(d.status(), IsOk());
  EXPECT_GT(c->makespan_s, a->makespan_s);  // skew costs time
  EXPECT_LT(d->makespan_s, c->makespan_s);
  EXPECT_NEAR(d->all2all_bytes / c->all2all_bytes, 1.0, 0.05);
}

TEST(ServingTest, BadClusterConfigsNameTheField) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"topology": "loopback"})", "c.json.device is required"},
      {R"({"device": "TPU"})", "c.json.device must be"},
      {R"({"device": {"name": "x", "peak_tflops": 0, "memory_gbps": 10}})", "peak_flops must be > 0"},
      {R"({"device": "H100", "shape": {"nic_gbps": 0}})", "c.json.shape.nic_gbps must be a number"},
      {R"({"device": "H100", "workers": 0})", "c.json.workers must be an integer"},
      {R"({"device": "H100", "fidelity": "fast"})", "c.json.fidelity must be flow, fluid or auto"},
      {R"({"device": "H100", "host_cores": -2})", "c.json.host_cores must be an integer"},
      {R"({"device": "H100", "front_end_jitter_stages": 0})", "c.json.front_end_jitter_stages must be an integer"},
      {R"({"device": "H100", "topology": "json"})", "c.json.topology_file is required"},
      {R"({"device": "H100", "device_hour_cost": "cheap"})", "c.json.device_hour_cost must be a number"},
      {R"({"device": "H100", "token_delivery_curve_ns": [[1, 5], [1, 6]]})", "c.json.token_delivery_curve_ns[1] must be [x, y]"},
      {R"({"device": "H100", "token_delivery_curve_ns": [[1, -5]]})", "c.json.token_delivery_curve_ns[0] must be [x, y]"},
      {R"({"device": "H100", "stream_close_curve_ns": [[1, -5]]})", "c.json.stream_close_curve_ns[0] must be [x, y]"},
      {R"({"device": "H100", "step_overhead_curve_ns": 7})", "c.json.step_overhead_curve_ns must be a non-empty list"},
      {R"({"device": "H100", "step_gap_curve_ns": [[2, 5], [1, 6]]})", "c.json.step_gap_curve_ns[1] must be [x, y]"},
      {R"({"device": "H100", "step_overhead_curve_ns": [[1, 5]], "step_overhead_ns": 3})",
       "c.json.step_overhead_curve_ns replaces step_overhead_ns"},
      {R"([1, 2])", "c.json must be a JSON object"},
      {R"({"device": )", "c.json: not valid JSON"},
  };
  for (const auto& [text, error] : cases) {
    EXPECT_THAT(ClusterSpec::FromJson(text, "c.json", "").status(), StatusIs(absl::StatusCode::kInvalidArgument, error)) << text;
  }
}

TEST(ServingTest, InconsistentClustersAreRefusedBeforeRunning) {
  Case c(8, 2, 16, Fidelity::kFluid);
  c.cluster.topology = "single_node";
  c.cluster.shape.gpus_per_host = 8;
  EXPECT_THAT(c.Run().status(), StatusIs(absl::StatusCode::kInvalidArgument, "shape offers 8 accelerators"));
  Case slots(8, 2, 2, Fidelity::kFluid);
  slots.cluster.expert_slots = 3;  // 8 experts over 2 workers need 4 each
  EXPECT_THAT(slots.Run().status(), StatusIs(absl::StatusCode::kInvalidArgument, "expert_slots: worker 0 must hold 4"));
  Case json(8, 2, 2, Fidelity::kFlow);
  json.cluster.topology = "json";
  json.cluster.topology_json = R"({"nodes": ["a", "b"], "links": [{"from": "a", "to": "b", "bandwidth_gbps": 1}]})";
  json.cluster.json_accelerators = {"a", "c"};
  EXPECT_THAT(json.Run().status(), StatusIs(absl::StatusCode::kInvalidArgument, "accelerators: no node 'c'"));
  json.cluster.json_accelerators = {"a", "b"};
  json.cluster.topology_json = R"({"nodes": ["a", "b"], "links": [{"from": "a", "to": "b", "bandwidth_gbps": 0}]})";
  EXPECT_THAT(json.Run().status(), StatusIs(absl::StatusCode::kInvalidArgument, "bandwidth_gbps must be a number > 0"));
}

TEST(ServingTest, BadWorkloadsNameTheFieldOrLine) {
  EXPECT_THAT(WorkloadSpec::FromJson(R"({"prompt_min": 8, "prompt_max": 4})", "w.json").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "prompt_max must be >= prompt_min"));
  EXPECT_THAT(WorkloadSpec::FromJson(R"({"tasks": [{"name": "a", "kept_fraction": 0}]})", "w.json").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "w.json.tasks[0].kept_fraction must be a number"));
  EXPECT_THAT(WorkloadSpec::FromJson(R"({"rate": -1})", "w.json").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "w.json.rate must be a number"));
  EXPECT_THAT(WorkloadSpec::FromJson(R"({"tasks": [{"share": 0.7}, {"share": 0.7}]})", "w.json").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "shares sum to more than 1"));
  const std::string trace = ::testing::TempDir() + "/trace.csv";
  std::ofstream(trace) << "arrival_s,prompt_tokens,output_tokens\n0.5,16,8\n1.0,zero,8\n";
  WorkloadSpec w;
  w.trace_path = trace;
  EXPECT_THAT(GenerateRequests(w).status(), StatusIs(absl::StatusCode::kInvalidArgument, "trace.csv line 3"));
  std::ofstream(trace) << "0.5,16,8\n0.25,4,2,nosuchtask\n";
  EXPECT_THAT(GenerateRequests(w).status(), StatusIs(absl::StatusCode::kInvalidArgument, "task 'nosuchtask'"));
  std::ofstream(trace) << "0.5,16,8\n0.25,4,2\n";
  auto requests = GenerateRequests(w);
  ASSERT_THAT(requests.status(), IsOk());
  ASSERT_EQ(requests->size(), 2u);
  EXPECT_EQ((*requests)[0].arrival, 250'000'000);  // sorted by arrival
  const ModelShape shape = ModelShape::FromConfig(TinyConfig(4, 2), "tiny", 2, 2);
  EXPECT_THAT(ExpertPopularity::FromLoad(shape, {{1, 1, 1, 1}}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "expert load has 1 layers, the model 2"));
  EXPECT_THAT(ExpertPopularity::FromLoad(shape, {{1, 1, 1, 1}, {0, 0, 0, 0}}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "layer 1: loads must be >= 0 with a positive sum"));
}

}  // namespace
}  // namespace moe::sim

namespace moe::sim {
namespace {

TEST(PlannerTest, PicksTheCheapestCandidateMeetingTheSloAndSaysWhyOthersFail) {
  Case c(8, 2, 1, Fidelity::kFluid);
  c.cluster.step_overhead = 0;
  c.cluster.device.peak_flops = 2e11;
  c.cluster.device_hour_cost = 1;
  c.workload.concurrency = 0;
  c.workload.rate = 2e4;
  c.workload.duration_s = 0.05;
  c.workload.prompt_min = c.workload.prompt_max = 32;
  c.workload.output_min = c.workload.output_max = 8;
  SimulationInputs in{c.config, c.shape, c.workload, c.popularity, {}};
  auto requests = GenerateRequests(c.workload);
  ASSERT_THAT(requests.status(), IsOk());
  in.requests = *requests;
  PlanSearch search;
  search.gpu_counts = {1, 2, 4};
  search.expert_parallel = {1, 2};
  search.replicate_above = {0};
  // One GPU's p99 latency, then an SLO just under it: more GPUs must be bought.
  auto loose = PlanCluster(in, c.cluster, {1e9, 1e9}, search);
  ASSERT_THAT(loose.status(), IsOk());
  ASSERT_TRUE(loose->front().feasible);
  EXPECT_EQ(loose->front().gpus, 1);
  const double one_gpu_ttft = loose->front().report.ttft.Percentile(0.99);
  auto tight = PlanCluster(in, c.cluster, {0.5 * one_gpu_ttft, 1e9}, search);
  ASSERT_THAT(tight.status(), IsOk());
  ASSERT_TRUE(tight->front().feasible);
  EXPECT_GT(tight->front().gpus, 1);
  EXPECT_LE(tight->front().report.ttft.Percentile(0.99), 0.5 * one_gpu_ttft);
  const auto failed = std::find_if(tight->begin(), tight->end(), [](const PlanRow& r) { return r.gpus == 1; });
  ASSERT_NE(failed, tight->end());
  EXPECT_FALSE(failed->feasible);
  EXPECT_THAT(failed->why, ::testing::HasSubstr("p99 TTFT"));
  // Memory: with a tiny device nothing fits, and the reason says so.
  search.device_memory_bytes = 1e3;
  auto none = PlanCluster(in, c.cluster, {1e9, 1e9}, search);
  ASSERT_THAT(none.status(), IsOk());
  EXPECT_FALSE(none->front().feasible);
  EXPECT_THAT(none->front().why, ::testing::HasSubstr("exceed 90% of"));
}

}  // namespace
}  // namespace moe::sim
