// System tests of the cluster as real processes: cluster/run-local starts moe-coordinator and N
// moe-worker processes on loopback; clients talk to it over gRPC like any user would.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "checkpoint/random_checkpoint.h"
#include "common/status.h"
#include "common/status_matchers.h"
#include "common/test_dir.h"
#include "engine/generator.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "moe/v1/cluster.grpc.pb.h"
#include "moe/v1/inference.grpc.pb.h"
#include "proto/grpc_util.h"
#include "cluster/local_cluster.h"
#include "coordinator/coordinator_server.h"
#include "exchange/in_process_exchange.h"
#include "worker/data_plane.h"
#include "worker/worker_server.h"
#include "absl/cleanup/cleanup.h"
#include "eval/cluster_backend.h"
#include "eval/engine_backend.h"
#include "router/expert_map.h"
#include "router/layer_router.h"
#include "router/pruning.h"
#include "router/router_stats.h"

namespace moe {
namespace {

using ::moe::testing::IsOk;


constexpr auto kCallDeadline = std::chrono::seconds(120);

const std::string& ModelDir() {
  static const std::string dir = [] {
    const auto d = ::moe::testing::ScratchDir("cluster_test");
    RandomCheckpointOptions o;
    o.num_layers = 3;
    o.hidden_size = 64;
    o.num_experts = 8;
    o.tokenizer = false;
    o.max_position_embeddings = 512;
    EXPECT_THAT(WriteRandomCheckpoint(d.string(), o), IsOk());
    return d.string();
  }();
  return dir;
}

std::vector<int32_t> Prompt(int i) {
  std::vector<int32_t> p = {1};
  for (int j = 0; j < 3 + i % 7; ++j) p.push_back(3 + (i * 37 + j * 11) % 500);
  return p;
}

// Greedy tokens of the single-process engine (EOS excluded, as the API reports them).
std::vector<std::vector<int32_t>> EngineGreedy(const std::vector<std::vector<int32_t>>& prompts, int64_t max_tokens) {
  ThreadPool pool(1);
  auto source = ModelSource::Open(ModelDir());
  EXPECT_THAT(source, IsOk());
  auto weights = LoadModelWeights(std::move(*source), {}, &pool);
  EXPECT_THAT(weights, IsOk());
  Model model(std::move(*weights), &pool);
  std::vector<GenerationRequest> requests;
  for (const auto& p : prompts) requests.push_back({p, max_tokens, {}, true});
  auto results = Generate(model, requests);
  EXPECT_THAT(results, IsOk());
  std::vector<std::vector<int32_t>> out;
  for (auto& r : *results) {
    if (r.finish == FinishReason::kEos) r.tokens.pop_back();
    out.push_back(r.tokens);
  }
  return out;
}

std::unique_ptr<v1::Inference::Stub> Client(const LocalCluster& c) {
  return v1::Inference::NewStub(grpc::CreateChannel(c.address(), grpc::InsecureChannelCredentials()));
}

v1::GenerateRequest Request(const std::vector<int32_t>& prompt, int max_tokens) {
  v1::GenerateRequest r;
  *r.mutable_prompt_token_ids() = {prompt.begin(), prompt.end()};
  r.set_max_tokens(max_tokens);
  return r;
}

// How the cluster is launched, and its data plane.
struct Launch {
  std::string launcher;             // cluster/<launcher>
  std::vector<std::string> flags;   // for the launcher
  int workers;
  std::string name;
};

class ClusterTest : public ::testing::TestWithParam<Launch> {};

// Streams one Generate call to its end (bounded by kCallDeadline), handing each chunk to `on_chunk`.
grpc::Status StreamGenerate(v1::Inference::Stub& stub, const v1::GenerateRequest& request,
                            const std::function<void(const v1::GenerateResponse&)>& on_chunk) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineAfter(kCallDeadline));
  auto reader = stub.Generate(&ctx, request);
  v1::GenerateResponse r;
  while (reader->Read(&r)) on_chunk(r);
  return reader->Finish();
}

TEST_P(ClusterTest, GreedyOutputEqualsTheSingleProcessEngine) {
  const int workers = GetParam().workers;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 10; ++i) prompts.push_back(Prompt(i));
  const auto expected = EngineGreedy(prompts, 12);
  MOE_ASSERT_OK_AND_ASSIGN(auto cluster, LocalCluster::Start(ModelDir(), workers, {}, std::chrono::seconds(120),
                                                             GetParam().flags, GetParam().launcher));
  auto stub = Client(*cluster);
  std::vector<v1::GenerateResponse> responses(prompts.size());
  std::vector<grpc::Status> status(prompts.size());
  std::vector<std::thread> threads;  // all at once, so they share engine steps
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(DeadlineAfter(kCallDeadline));
      status[i] = stub->Complete(&ctx, Request(prompts[i], 12), &responses[i]);
    });
  }
  for (auto& t : threads) t.join();
  int64_t all2all = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(status[i].ok()) << status[i].error_message();
    EXPECT_EQ(std::vector<int32_t>(responses[i].token_ids().begin(), responses[i].token_ids().end()), expected[i])
        << workers << " workers, prompt " << i;
    EXPECT_EQ(responses[i].usage().prompt_tokens(), static_cast<int64_t>(prompts[i].size()));
    EXPECT_EQ(responses[i].usage().completion_tokens(), responses[i].token_ids_size());
    all2all += responses[i].usage().all2all_bytes();
  }
  if (workers == 1) EXPECT_EQ(all2all, 0);
  else EXPECT_GT(all2all, 0);
  EXPECT_THAT(cluster->Stop(), IsOk());
}

// run-local: separate processes, gRPC data plane. run-mpi: one mpirun job (role from the rank), with the
// MPI_Alltoallv data plane, or gRPC inside the MPI job.
INSTANTIATE_TEST_SUITE_P(
    Launchers, ClusterTest,
    ::testing::Values(Launch{"run-local", {}, 1, "local_1_worker"}, Launch{"run-local", {}, 2, "local_2_workers"},
                      Launch{"run-local", {}, 4, "local_4_workers"},
                      Launch{"run-mpi", {"--exchange", "mpi"}, 2, "mpirun_2_workers_mpi_exchange"},
                      Launch{"run-mpi", {"--exchange", "mpi"}, 3, "mpirun_3_workers_mpi_exchange"},
                      Launch{"run-mpi", {"--exchange", "grpc"}, 2, "mpirun_2_workers_grpc_exchange"}),
    [](const ::testing::TestParamInfo<Launch>& info) { return info.param.name; });

TEST(ClusterSystemTest, SixtyFourConcurrentStreamsAllCompleteUnmixed) {
  constexpr int kClients = 64;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < kClients; ++i) prompts.push_back(Prompt(i));
  const auto expected = EngineGreedy(prompts, 10);
  MOE_ASSERT_OK_AND_ASSIGN(auto cluster, LocalCluster::Start(ModelDir(), 4));
  auto stub = Client(*cluster);
  std::vector<std::vector<int32_t>> got(kClients);
  std::vector<grpc::Status> status(kClients);
  std::vector<v1::FinishReason> finish(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      status[i] = StreamGenerate(*stub, Request(prompts[i], 10), [&](const v1::GenerateResponse& r) {
        got[i].insert(got[i].end(), r.token_ids().begin(), r.token_ids().end());
        if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) finish[i] = r.finish_reason();
      });
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(status[i].ok()) << i << ": " << status[i].error_message();
    EXPECT_EQ(got[i], expected[i]) << "client " << i;
    EXPECT_TRUE(finish[i] == v1::FINISH_REASON_LENGTH || finish[i] == v1::FINISH_REASON_EOS) << i;
  }
  // The metrics saw the traffic.
  auto metrics = HttpGet(cluster->metrics_url(), std::chrono::seconds(5));
  ASSERT_THAT(metrics, IsOk());
  EXPECT_NE(metrics->find("moe_time_to_first_token_seconds_count 64"), std::string::npos) << *metrics;
  EXPECT_NE(metrics->find("moe_all2all_pair_bytes_total{src=\"0\",dst=\"1\"}"), std::string::npos);
  // Every step is timed; a gap is timed between steps that follow each other (10 tokens a stream: 9+).
  const double steps = MetricValue(*metrics, "moe_engine_steps_total");
  EXPECT_GE(steps, 10) << *metrics;
  EXPECT_EQ(MetricValue(*metrics, "moe_engine_step_seconds_count"), steps) << *metrics;
  EXPECT_GT(MetricValue(*metrics, "moe_engine_step_seconds_sum"), 0) << *metrics;
  EXPECT_GE(MetricValue(*metrics, "moe_engine_step_gap_seconds_count"), 9) << *metrics;
  EXPECT_LT(MetricValue(*metrics, "moe_engine_step_gap_seconds_count"), steps) << *metrics;
  EXPECT_GT(MetricValue(*metrics, "moe_engine_step_gap_seconds_sum"), 0) << *metrics;
  // Each worker timed its forward passes and the all-to-all within them, and a worker's forward pass is
  // part of the coordinator's step.
  for (int w = 0; w < 4; ++w) {
    const double forward = MetricValue(*metrics, absl::StrCat("moe_worker_forward_seconds_total{worker=\"", w, "\"}"));
    const double exchange = MetricValue(*metrics, absl::StrCat("moe_worker_exchange_seconds_total{worker=\"", w, "\"}"));
    EXPECT_GT(exchange, 0) << "worker " << w << "\n" << *metrics;
    EXPECT_LT(exchange, forward) << "worker " << w;
    EXPECT_LE(forward, MetricValue(*metrics, "moe_engine_step_seconds_sum")) << "worker " << w;
  }
  // Each stream was prefilled once, several to a step at most once each.
  EXPECT_EQ(MetricValue(*metrics, "moe_engine_prefilled_sequences_total"), kClients) << *metrics;
  EXPECT_GE(MetricValue(*metrics, "moe_engine_prefill_steps_total"), 1) << *metrics;
  EXPECT_LE(MetricValue(*metrics, "moe_engine_prefill_steps_total"), kClients) << *metrics;
  EXPECT_EQ(MetricValue(*metrics, "moe_engine_prefill_step_seconds_count"),
            MetricValue(*metrics, "moe_engine_prefill_steps_total")) << *metrics;
  EXPECT_GT(MetricValue(*metrics, "moe_engine_prefill_rows_total"), 0) << *metrics;
}


absl::StatusOr<double> ScrapeMetric(const LocalCluster& cluster, const std::string& series) {
  MOE_ASSIGN_OR_RETURN(std::string metrics, HttpGet(cluster.metrics_url(), std::chrono::seconds(5)));
  return MetricValue(metrics, series);
}

// Polls a metric until `done(value)` or the deadline; returns the last value seen.
double AwaitMetric(const LocalCluster& cluster, const std::string& series, const std::function<bool(double)>& done,
                   std::chrono::milliseconds deadline) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  double value = -1;
  do {
    auto v = ScrapeMetric(cluster, series);
    if (v.ok()) value = *v;
    if (done(value)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling interval under a deadline
  } while (std::chrono::steady_clock::now() < until);
  return value;
}

TEST(ClusterFaultTest, KillNineOfAWorkerWhileTwentyRequestsStreamLosesNothingAndItsReturnIsUsed) {
  constexpr int kClients = 20;
  constexpr int kTokens = 40;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < kClients; ++i) prompts.push_back(Prompt(i));
  const auto expected = EngineGreedy(prompts, kTokens);
  MOE_ASSERT_OK_AND_ASSIGN(auto cluster, LocalCluster::Start(ModelDir(), 3));
  ASSERT_EQ(cluster->worker_pids().size(), 3u);
  auto stub = Client(*cluster);

  absl::Mutex mutex;
  int tokens_received = 0;
  std::vector<std::vector<int32_t>> got(kClients);
  std::vector<grpc::Status> status(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      status[i] = StreamGenerate(*stub, Request(prompts[i], kTokens), [&](const v1::GenerateResponse& r) {
        absl::MutexLock lock(&mutex);
        got[i].insert(got[i].end(), r.token_ids().begin(), r.token_ids().end());
        tokens_received += r.token_ids_size();
      });
    });
  }
  {
    // Kill once every stream is under way (about a fifth of all tokens delivered).
    absl::MutexLock lock(&mutex);
    mutex.AwaitWithTimeout(absl::Condition(+[](int* n) { return *n >= kClients * kTokens / 5; }, &tokens_received),
                           absl::Seconds(120));
    ASSERT_LT(tokens_received, kClients * kTokens / 2) << "the streams finished before the fault could be injected";
  }
  const auto killed_at = std::chrono::steady_clock::now();
  ASSERT_EQ(::kill(cluster->worker_pids()[1], SIGKILL), 0);
  const double failures = AwaitMetric(*cluster, "moe_worker_failures_total", [](double v) { return v >= 1; },
                                      std::chrono::seconds(2));
  const auto noticed_after = std::chrono::steady_clock::now() - killed_at;
  EXPECT_EQ(failures, 1) << "the coordinator did not declare the worker dead within 2 s";
  std::cerr << "worker death noticed after "
            << std::chrono::duration_cast<std::chrono::milliseconds>(noticed_after).count() << " ms\n";
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(status[i].ok()) << "client " << i << ": " << status[i].error_message();
    size_t first_difference = 0;
    while (first_difference < std::min(got[i].size(), expected[i].size()) && got[i][first_difference] == expected[i][first_difference]) {
      ++first_difference;
    }
    EXPECT_EQ(got[i], expected[i]) << "client " << i << ": every token exactly once, as in a fault-free greedy run; "
                                   << "first difference at token " << first_difference;
  }
  MOE_ASSERT_OK_AND_ASSIGN(std::string metrics, HttpGet(cluster->metrics_url(), std::chrono::seconds(5)));
  EXPECT_EQ(MetricValue(metrics, "moe_workers_alive"), 2) << metrics;
  EXPECT_GE(MetricValue(metrics, "moe_resumed_requests_total"), 1) << metrics;
  std::string dead_slot;
  for (const char* slot : {"0", "1", "2"}) {
    if (MetricValue(metrics, absl::StrCat("moe_worker_up{worker=\"", slot, "\"}")) == 0) dead_slot = slot;
  }
  ASSERT_FALSE(dead_slot.empty()) << metrics;
  const std::string dead_tokens = absl::StrCat("moe_worker_generated_tokens_total{worker=\"", dead_slot, "\"}");

  // The worker comes back (a new process): it takes the dead one's slot and serves again.
  const double before = MetricValue(metrics, dead_tokens);
  MOE_ASSERT_OK_AND_ASSIGN(int pid, cluster->StartWorker(ModelDir()));
  ASSERT_GT(pid, 0);
  EXPECT_EQ(AwaitMetric(*cluster, "moe_workers_alive", [](double v) { return v == 3; }, std::chrono::seconds(60)), 3);
  for (int i = 0; i < 6; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineAfter(kCallDeadline));
    v1::GenerateResponse response;
    ASSERT_TRUE(stub->Complete(&ctx, Request(prompts[i], 8), &response).ok());
    const std::vector<int32_t> want(expected[i].begin(), expected[i].begin() + std::min<size_t>(8, expected[i].size()));
    EXPECT_EQ(std::vector<int32_t>(response.token_ids().begin(), response.token_ids().end()), want);
  }
  MOE_ASSERT_OK_AND_ASSIGN(double after, ScrapeMetric(*cluster, dead_tokens));
  EXPECT_GT(after, before) << "the returning worker was not given sequences";
  EXPECT_THAT(cluster->Stop(), IsOk());
}

// Under mpirun membership is fixed: a dead rank ends the job, and every client gets an error within
// seconds instead of hanging.
// A loopback port nothing listens on (bound to port 0, read back, released).
int UnusedLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(addr);
  int port = 0;
  if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) == 0) {
    port = ntohs(addr.sin_port);
  }
  if (fd >= 0) ::close(fd);
  return port;
}

// A worker that registers before its port listens (a freshly started worker refused the coordinator's
// first connection once on this machine under CI's load, and was declared dead): the coordinator's
// LoadShard tries again, 100 to 400 ms apart, each time on a new channel, and reaches it once it
// listens. (The same channel fails every call at once for gRPC's reconnect backoff, 1 s and more, after
// one refused connection: tried on it, the five tries 100 ms apart all failed.) The worker here is a
// bare Worker service that starts listening 250 ms after registering: the fault injected, not a wait.
TEST(ClusterFaultTest, AWorkerThatRefusesTheFirstConnectionsIsPlacedOnceItListens) {
  class LateWorker : public v1::Worker::Service {
   public:
    grpc::Status LoadShard(grpc::ServerContext*, const v1::LoadShardRequest*, v1::LoadShardResponse*) override {
      absl::MutexLock lock(&mutex);
      ++loads;
      return grpc::Status::OK;
    }
    absl::Mutex mutex;
    int loads ABSL_GUARDED_BY(mutex) = 0;
  };
  CoordinatorServerOptions co;
  co.coordinator.model_dir = ModelDir();
  co.coordinator.num_workers = 1;
  co.coordinator.heartbeat_timeout = std::chrono::minutes(1);  // the bare worker does not heartbeat
  co.metrics_port = -1;
  std::atomic<bool> stop_coordinator{false};
  std::promise<std::string> control_plane;
  std::thread coordinator([&] {
    RunCoordinator(co, stop_coordinator, [&](const std::string& a) { control_plane.set_value(a); });
  });
  auto stop = absl::MakeCleanup([&] {
    stop_coordinator = true;
    coordinator.join();
  });
  auto address = control_plane.get_future();
  ASSERT_EQ(address.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  const int port = UnusedLoopbackPort();
  ASSERT_GT(port, 0);
  const std::string worker_address = absl::StrCat("127.0.0.1:", port);

  auto control = v1::Coordinator::NewStub(grpc::CreateChannel(address.get(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineAfter(std::chrono::seconds(10)));
  v1::RegisterRequest registration;
  registration.set_address(worker_address);
  v1::RegisterResponse registered;
  ASSERT_TRUE(control->Register(&ctx, registration, &registered).ok());

  std::this_thread::sleep_for(std::chrono::milliseconds(250));  // the fault: not listening yet
  LateWorker worker;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(worker_address, grpc::InsecureServerCredentials());
  builder.RegisterService(&worker);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  {
    absl::MutexLock lock(&worker.mutex);
    EXPECT_TRUE(worker.mutex.AwaitWithTimeout(absl::Condition(+[](int* n) { return *n >= 1; }, &worker.loads),
                                              absl::Seconds(10)))
        << "the coordinator gave up on a worker that listens 250 ms after registering";
  }
  server->Shutdown(DeadlineAfter(std::chrono::seconds(1)));
}

TEST(ClusterFaultTest, UnderMpirunADeadRankGivesEveryClientAnErrorWithinSeconds) {
  constexpr int kClients = 6;
  MOE_ASSERT_OK_AND_ASSIGN(auto cluster, LocalCluster::Start(ModelDir(), 2, {}, std::chrono::seconds(120), {}, "run-mpi"));
  ASSERT_EQ(cluster->worker_pids().size(), 2u);
  auto stub = Client(*cluster);
  absl::Mutex mutex;
  int tokens_received = 0;
  std::vector<grpc::Status> status(kClients);
  std::vector<std::chrono::steady_clock::time_point> ended(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      status[i] = StreamGenerate(*stub, Request(Prompt(i), 400), [&](const v1::GenerateResponse& r) {
        absl::MutexLock lock(&mutex);
        tokens_received += r.token_ids_size();
      });
      ended[i] = std::chrono::steady_clock::now();
    });
  }
  {
    absl::MutexLock lock(&mutex);
    mutex.AwaitWithTimeout(absl::Condition(+[](int* n) { return *n >= 3 * kClients; }, &tokens_received), absl::Seconds(120));
  }
  const auto killed_at = std::chrono::steady_clock::now();
  ASSERT_EQ(::kill(cluster->worker_pids()[0], SIGKILL), 0);
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_EQ(status[i].error_code(), grpc::StatusCode::UNAVAILABLE) << i << ": " << status[i].error_message();
    EXPECT_LT(ended[i] - killed_at, std::chrono::seconds(15)) << "client " << i << " waited too long for its error";
    std::cerr << "client " << i << ": " << status[i].error_message() << " after "
              << std::chrono::duration_cast<std::chrono::milliseconds>(ended[i] - killed_at).count() << " ms\n";
  }
  EXPECT_THAT(cluster->Stop(), IsOk());
}

TEST(ClusterSystemTest, CancelFreesTheSlotAndLimitsGiveResourceExhausted) {
  MOE_ASSERT_OK_AND_ASSIGN(auto cluster, LocalCluster::Start(ModelDir(), 2, {"--max-running", "1", "--max-queued", "1",
                                                                             "--max-batch-tokens", "16"}));
  auto stub = Client(*cluster);
  {  // A long stream takes the only running slot; the client cancels after a few tokens.
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineAfter(kCallDeadline));
    auto reader = stub->Generate(&ctx, Request(Prompt(1), 400));
    v1::GenerateResponse r;
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(reader->Read(&r));
    ctx.TryCancel();
    while (reader->Read(&r)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  {  // The slot is free again: a new request completes (it would wait for 400 tokens otherwise).
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineAfter(std::chrono::seconds(30)));
    v1::GenerateResponse r;
    grpc::Status s = stub->Complete(&ctx, Request(Prompt(2), 4), &r);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(r.token_ids_size() + (r.finish_reason() == v1::FINISH_REASON_EOS ? 1 : 0) > 0, true);
  }
  {  // One running + one queued: a burst of long requests gets RESOURCE_EXHAUSTED, never a hang.
    constexpr int kBurst = 6;
    std::vector<grpc::Status> status(kBurst);
    std::vector<std::thread> threads;
    for (int i = 0; i < kBurst; ++i) {
      threads.emplace_back([&, i] {
        grpc::ClientContext ctx;
        ctx.set_deadline(DeadlineAfter(kCallDeadline));
        v1::GenerateResponse r;
        status[i] = stub->Complete(&ctx, Request(Prompt(i), 200), &r);
      });
    }
    for (auto& t : threads) t.join();
    int exhausted = 0, ok = 0;
    for (const auto& s : status) {
      exhausted += s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
      ok += s.ok();
    }
    EXPECT_GE(exhausted, 1);
    EXPECT_GE(ok, 1);
    EXPECT_EQ(exhausted + ok, kBurst);
  }
  // A prompt over the batch token limit is refused at once.
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineAfter(std::chrono::seconds(10)));
  v1::GenerateResponse r;
  EXPECT_EQ(stub->Complete(&ctx, Request(std::vector<int32_t>(20, 5), 4), &r).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(cluster->Stop(), IsOk());
}

TEST(ClusterSystemTest, BadRequestsGetInvalidArgumentAndHealthServes) {
  MOE_ASSERT_OK_AND_ASSIGN(auto cluster, LocalCluster::Start(ModelDir(), 1));
  auto stub = Client(*cluster);
  auto call = [&](v1::GenerateRequest req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineAfter(std::chrono::seconds(10)));
    v1::GenerateResponse r;
    return stub->Complete(&ctx, req, &r);
  };
  struct Case {
    const char* name;
    v1::GenerateRequest request;
    const char* message;
  };
  std::vector<Case> cases;
  cases.push_back({"empty prompt", Request({}, 4), "empty prompt"});
  auto hot = Request(Prompt(0), 4);
  hot.set_temperature(-1);
  cases.push_back({"negative temperature", hot, "temperature"});
  auto top_p = Request(Prompt(0), 4);
  top_p.set_top_p(2);
  cases.push_back({"top_p", top_p, "top_p"});
  auto task = Request(Prompt(0), 4);
  task.set_task("nonexistent");
  cases.push_back({"unknown task", task, "unknown task"});
  cases.push_back({"too long", Request(Prompt(0), 600), "longer than the context"});
  cases.push_back({"bad token", Request({1, 99999}, 4), "outside the vocabulary"});
  auto text = Request({}, 4);
  text.set_prompt("no tokenizer here");
  cases.push_back({"text without tokenizer", text, "no tokenizer"});
  for (const Case& c : cases) {
    grpc::Status s = call(c.request);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(c.message), std::string::npos) << c.name << ": " << s.error_message();
  }
  auto health = grpc::health::v1::Health::NewStub(grpc::CreateChannel(cluster->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineAfter(std::chrono::seconds(10)));
  grpc::health::v1::HealthCheckRequest hreq;
  grpc::health::v1::HealthCheckResponse hresp;
  ASSERT_TRUE(health->Check(&ctx, hreq, &hresp).ok());
  EXPECT_EQ(hresp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_THAT(cluster->Stop(), IsOk());
}

TEST(ClusterSystemTest, TheBundledModelAnswersTasksAsTheEngineDoesWithTextAndStopStrings) {
  const std::string model_dir = std::string(MOE_SOURCE_DIR) + "/models/tiny-moe";
  MOE_ASSERT_OK_AND_ASSIGN(auto suite, LoadTaskSuite(std::string(MOE_SOURCE_DIR) + "/data/tasks", "test", 20));
  // The engine's answers.
  ThreadPool pool(1);
  MOE_ASSERT_OK_AND_ASSIGN(auto source, ModelSource::Open(model_dir));
  MOE_ASSERT_OK_AND_ASSIGN(auto tokenizer, Tokenizer::Load(source->tokenizer_path()));
  MOE_ASSERT_OK_AND_ASSIGN(auto weights, LoadModelWeights(std::move(source), {}, &pool));
  Model model(std::move(weights), &pool);
  EngineBackend engine(&model, tokenizer.get());
  MOE_ASSERT_OK_AND_ASSIGN(auto expected, EvaluateTasks(engine, suite, 64, 16));

  MOE_ASSERT_OK_AND_ASSIGN(auto cluster, LocalCluster::Start(model_dir, 2));
  ClusterBackend backend(cluster->address(), "");
  MOE_ASSERT_OK_AND_ASSIGN(auto got, EvaluateTasks(backend, suite, 64, 16));
  ASSERT_EQ(got.size(), expected.size());
  for (size_t t = 0; t < got.size(); ++t) {
    EXPECT_EQ(got[t].correct, expected[t].correct) << got[t].task;
    EXPECT_EQ(got[t].total, 20);
  }
  EXPECT_GT(backend.all2all_bytes(), 0);

  // Text streaming and stop strings: "rev abcd=" is answered "dcba" by the bundled model.
  auto stub = Client(*cluster);
  v1::GenerateRequest req;
  req.set_prompt("rev abcd=");
  req.set_max_tokens(10);
  std::string text;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineAfter(kCallDeadline));
    auto reader = stub->Generate(&ctx, req);
    v1::GenerateResponse r;
    while (reader->Read(&r)) {
      text += r.text();
      if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) finish = r.finish_reason();
    }
    ASSERT_TRUE(reader->Finish().ok());
  }
  EXPECT_EQ(text, "dcba");
  EXPECT_EQ(finish, v1::FINISH_REASON_EOS);
  req.add_stop("b");
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineAfter(kCallDeadline));
  v1::GenerateResponse r;
  ASSERT_TRUE(stub->Complete(&ctx, req, &r).ok());
  EXPECT_EQ(r.text(), "dc");
  EXPECT_EQ(r.finish_reason(), v1::FINISH_REASON_STOP);

  // ignore_eos: the same prompt runs past its end-of-sequence token to exactly max_tokens.
  req.clear_stop();
  req.set_ignore_eos(true);
  grpc::ClientContext ignore_ctx;
  ignore_ctx.set_deadline(DeadlineAfter(kCallDeadline));
  ASSERT_TRUE(stub->Complete(&ignore_ctx, req, &r).ok());
  EXPECT_EQ(r.token_ids_size(), 10);
  EXPECT_EQ(r.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_THAT(r.text(), ::testing::StartsWith("dcba"));
  EXPECT_THAT(cluster->Stop(), IsOk());
}


// Builds an UNCURL map (p = 2, every MoE layer) for `model_dir` from router statistics of `prompts`,
// writes it to `dir`, and returns it.
ExpertMap MakeUncurlMap(const std::string& model_dir, const std::string& name, const std::vector<std::vector<int32_t>>& prompts,
                        const std::string& dir) {
  ThreadPool pool(1);
  auto source_or = ModelSource::Open(model_dir);
  EXPECT_THAT(source_or, IsOk());
  std::shared_ptr<const ModelSource> source = std::move(*source_or);
  auto weights = LoadModelWeights(source, {}, &pool);
  EXPECT_THAT(weights, IsOk());
  Model model(std::move(*weights), &pool);
  auto stats = CollectRouterStats(model, prompts, 16);
  EXPECT_THAT(stats, IsOk());
  ExpertMap map;
  map.name = name;
  map.task = "test";
  map.method = "uncurl";
  map.experts_kept = model.config().num_experts / 2;
  map.pruning_factor = 2;
  auto identity = IdentifyModel(*source);
  EXPECT_THAT(identity, IsOk());
  map.model = *identity;
  for (int64_t l = 0; l < model.config().num_layers; ++l) {
    auto layer = BuildUncurlLayer(l, (*stats)[l], map.experts_kept, [&](int32_t e) { return ReadExpertFfn(*source, l, e); });
    EXPECT_THAT(layer, IsOk());
    map.layers.push_back(std::move(*layer));
  }
  EXPECT_THAT(WriteExpertMap(map, dir, DType::kF32), IsOk());
  return map;
}

TEST(ClusterRouterTest, TaskExpertMapsAreLoadedServedLocallyAndRemovedWithoutARestart) {
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 12; ++i) prompts.push_back(Prompt(i));
  const auto maps_dir = ::moe::testing::ScratchDir("cluster_test_maps");
  const std::string map_dir = (maps_dir / "t-uncurl-p2").string();
  const ExpertMap map = MakeUncurlMap(ModelDir(), "t-uncurl-p2", prompts, map_dir);

  // The engine's greedy answers through the map.
  std::vector<std::vector<int32_t>> expected;
  {
    ThreadPool pool(1);
    MOE_ASSERT_OK_AND_ASSIGN(auto source, ModelSource::Open(ModelDir()));
    MOE_ASSERT_OK_AND_ASSIGN(auto weights, LoadModelWeights(std::move(source), {}, &pool));
    Model model(std::move(weights), &pool);
    MOE_ASSERT_OK_AND_ASSIGN(ExpertMap with_weights, ReadExpertMap(map_dir, true));
    const auto base = MergedExpertBaseIds({&with_weights, 1}, model.config())[0];
    InstallMergedExperts(with_weights, base, model.mutable_weights(), nullptr);
    const SlotRouting routing = ResolveSlotRouting(with_weights, base, model.config());
    std::vector<GenerationRequest> requests;
    for (const auto& p : prompts) requests.push_back({p, 10, {}, true, &routing});
    MOE_ASSERT_OK_AND_ASSIGN(auto results, Generate(model, requests));
    for (auto& r : results) {
      if (r.finish == FinishReason::kEos) r.tokens.pop_back();
      expected.push_back(r.tokens);
    }
  }
  const std::vector<std::vector<int32_t>> full = EngineGreedy(prompts, 10);
  ASSERT_NE(expected, full);  // the map changes answers, so the comparison below means something

  MOE_ASSERT_OK_AND_ASSIGN(auto cluster, LocalCluster::Start(ModelDir(), 3));
  auto stub = Client(*cluster);
  auto admin = v1::RouterAdmin::NewStub(grpc::CreateChannel(cluster->address(), grpc::InsecureChannelCredentials()));
  auto load = [&](const std::string& path, v1::ExpertMapInfo* info) {
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineAfter(kCallDeadline));
    v1::LoadExpertMapRequest req;
    req.set_path(path);
    return admin->LoadExpertMap(&ctx, req, info);
  };
  auto complete = [&](const std::vector<int32_t>& prompt, const std::string& task, v1::GenerateResponse* r) {
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineAfter(kCallDeadline));
    v1::GenerateRequest req = Request(prompt, 10);
    req.set_task(task);
    return stub->Complete(&ctx, req, r);
  };
  v1::GenerateResponse r;
  EXPECT_EQ(complete(prompts[0], "t-uncurl-p2", &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::ExpertMapInfo info;
  const grpc::Status loaded = load(map_dir, &info);
  ASSERT_TRUE(loaded.ok()) << loaded.error_message();
  EXPECT_EQ(info.name(), "t-uncurl-p2");
  ASSERT_EQ(info.reachable_experts_size(), 3);
  for (int64_t n : info.reachable_experts()) EXPECT_EQ(n, 4);
  EXPECT_EQ(load(map_dir, &info).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(load((maps_dir / "absent").string(), &info).error_code(), grpc::StatusCode::NOT_FOUND);
  // A map made for another model (same shapes, other weights) is refused.
  {
    const auto other_dir = maps_dir / "other-model";
    RandomCheckpointOptions o;
    o.num_layers = 3;
    o.hidden_size = 64;
    o.tokenizer = false;
    o.max_position_embeddings = 512;
    o.seed = 99;
    ASSERT_THAT(WriteRandomCheckpoint((other_dir / "model").string(), o), IsOk());
    MakeUncurlMap((other_dir / "model").string(), "other", prompts, (other_dir / "map").string());
    const grpc::Status refused = load((other_dir / "map").string(), &info);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(refused.error_message().find("another model"), std::string::npos) << refused.error_message();
  }

  // Served through the map: the engine's answers, and no token leaves the map's home worker.
  int64_t map_bytes = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(complete(prompts[i], "t-uncurl-p2", &r).ok());
    EXPECT_EQ(std::vector<int32_t>(r.token_ids().begin(), r.token_ids().end()), expected[i]) << i;
    map_bytes += r.usage().all2all_bytes();
  }
  EXPECT_EQ(map_bytes, 0);
  int64_t full_bytes = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(complete(prompts[i], "", &r).ok());
    EXPECT_EQ(std::vector<int32_t>(r.token_ids().begin(), r.token_ids().end()), full[i]) << i;
    full_bytes += r.usage().all2all_bytes();
  }
  EXPECT_GT(full_bytes, 0);
  {
    grpc::ClientContext ctx;
    v1::ListExpertMapsResponse list;
    ASSERT_TRUE(admin->ListExpertMaps(&ctx, {}, &list).ok());
    ASSERT_EQ(list.maps_size(), 1);
    EXPECT_EQ(list.maps(0).requests(), static_cast<int64_t>(prompts.size()));
    EXPECT_GT(list.maps(0).completion_tokens(), 0);
    grpc::ClientContext info_ctx;
    v1::ModelInfoResponse model_info;
    ASSERT_TRUE(stub->ModelInfo(&info_ctx, {}, &model_info).ok());
    ASSERT_EQ(model_info.tasks_size(), 1);
    EXPECT_EQ(model_info.tasks(0), "t-uncurl-p2");
  }
  auto remove = [&](const std::string& name) {
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineAfter(kCallDeadline));
    v1::RemoveExpertMapRequest req;
    req.set_name(name);
    v1::RemoveExpertMapResponse resp;
    return admin->RemoveExpertMap(&ctx, req, &resp);
  };
  ASSERT_TRUE(remove("t-uncurl-p2").ok());
  EXPECT_EQ(remove("t-uncurl-p2").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(complete(prompts[0], "t-uncurl-p2", &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(complete(prompts[0], "", &r).ok());
  EXPECT_EQ(std::vector<int32_t>(r.token_ids().begin(), r.token_ids().end()), full[0]);
  EXPECT_THAT(cluster->Stop(), IsOk());
  std::filesystem::remove_all(maps_dir);
}

// Dr.LLM layer routing through the cluster: a router set is loaded without a restart, each request's
// path is decided at prefill on its worker (different paths in one batch, so workers must agree on
// repeat passes), answers and layers per token equal the engine's with the same router, and a router
// for another model or an unknown name is refused.
TEST(ClusterRouterTest, LayerRoutersDecidePathsPerRequestAndAreManagedWithoutARestart) {
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 12; ++i) prompts.push_back(Prompt(i));
  const auto dir = ::moe::testing::ScratchDir("cluster_test_routers");
  MOE_ASSERT_OK_AND_ASSIGN(auto source, ModelSource::Open(ModelDir()));
  MOE_ASSERT_OK_AND_ASSIGN(ModelIdentity identity, IdentifyModel(*source));
  LayerRouter router = NewLayerRouter("mixed", identity, 7);
  for (RouterMlp& mlp : router.layers) {
    for (float& w : mlp.fc2_weight) w *= 6.0f;  // decisive, prompt-dependent choices
  }
  router.skip_threshold = 0.45;
  ASSERT_THAT(WriteLayerRouter(router, (dir / "mixed").string()), IsOk());

  std::vector<std::vector<int32_t>> expected;
  std::vector<int64_t> expected_layers;
  std::set<LayerPath> paths;
  {
    ThreadPool pool(1);
    MOE_ASSERT_OK_AND_ASSIGN(auto weights, LoadModelWeights(std::move(source), {}, &pool));
    Model model(std::move(weights), &pool);
    LayerRoutingPolicy policy(&router, router.skip_threshold);
    std::vector<GenerationRequest> requests;
    for (const auto& p : prompts) {
      GenerationRequest r{p, 10, {}, true};
      r.layer_policy = &policy;
      requests.push_back(r);
    }
    MOE_ASSERT_OK_AND_ASSIGN(auto results, Generate(model, requests));
    for (auto& r : results) {
      if (r.finish == FinishReason::kEos) r.tokens.pop_back();
      expected.push_back(r.tokens);
      expected_layers.push_back(LayersExecuted(r.layer_path, model.config().num_layers));
      paths.insert(r.layer_path);
    }
  }
  ASSERT_GE(paths.size(), 3u) << "the router should pick several paths, so the test covers mixed batches";
  ASSERT_NE(expected, EngineGreedy(prompts, 10));

  MOE_ASSERT_OK_AND_ASSIGN(auto cluster, LocalCluster::Start(ModelDir(), 3));
  auto stub = Client(*cluster);
  auto admin = v1::RouterAdmin::NewStub(grpc::CreateChannel(cluster->address(), grpc::InsecureChannelCredentials()));
  auto load = [&](const std::string& path, v1::LayerRouterInfo* info) {
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineAfter(kCallDeadline));
    v1::LoadLayerRouterRequest req;
    req.set_path(path);
    return admin->LoadLayerRouter(&ctx, req, info);
  };
  auto complete = [&](const std::vector<int32_t>& prompt, const std::string& layer_router, v1::GenerateResponse* r) {
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineAfter(kCallDeadline));
    v1::GenerateRequest req = Request(prompt, 10);
    req.set_layer_router(layer_router);
    return stub->Complete(&ctx, req, r);
  };
  v1::GenerateResponse r;
  EXPECT_EQ(complete(prompts[0], "mixed", &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::LayerRouterInfo info;
  const grpc::Status loaded = load((dir / "mixed").string(), &info);
  ASSERT_TRUE(loaded.ok()) << loaded.error_message();
  EXPECT_EQ(info.name(), "mixed");
  EXPECT_NEAR(info.skip_threshold(), 0.45, 1e-9);
  EXPECT_EQ(load((dir / "mixed").string(), &info).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(load((dir / "absent").string(), &info).error_code(), grpc::StatusCode::NOT_FOUND);
  {
    ModelIdentity other = identity;
    other.router_fingerprint = "0123456789abcdef";
    ASSERT_THAT(WriteLayerRouter(NewLayerRouter("other", other, 1), (dir / "other").string()), IsOk());
    const grpc::Status refused = load((dir / "other").string(), &info);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(refused.error_message().find("another model"), std::string::npos) << refused.error_message();
  }
  {
    grpc::ClientContext ctx;
    v1::GenerateRequest req = Request(prompts[0], 4);
    req.set_skip_threshold(0.5f);  // a knob without a router
    EXPECT_EQ(stub->Complete(&ctx, req, &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    grpc::ClientContext ctx2;
    req.set_layer_router("mixed");
    req.set_skip_threshold(1.5f);
    EXPECT_EQ(stub->Complete(&ctx2, req, &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }

  // All prompts at once: batches mix paths across the three workers.
  std::vector<v1::GenerateResponse> responses(prompts.size());
  std::vector<grpc::Status> status(prompts.size());
  std::vector<std::thread> calls;
  for (size_t i = 0; i < prompts.size(); ++i) {
    calls.emplace_back([&, i] { status[i] = complete(prompts[i], "mixed", &responses[i]); });
  }
  for (auto& t : calls) t.join();
  int64_t tokens = 0, layers = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(status[i].ok()) << status[i].error_message();
    layers += expected_layers[i] * responses[i].usage().completion_tokens();
    EXPECT_EQ(std::vector<int32_t>(responses[i].token_ids().begin(), responses[i].token_ids().end()), expected[i]) << i;
    EXPECT_DOUBLE_EQ(responses[i].usage().layers_per_token(), static_cast<double>(expected_layers[i])) << i;
    tokens += responses[i].usage().completion_tokens();
  }
  {
    grpc::ClientContext ctx;
    v1::ListLayerRoutersResponse list;
    ASSERT_TRUE(admin->ListLayerRouters(&ctx, {}, &list).ok());
    ASSERT_EQ(list.routers_size(), 1);
    EXPECT_EQ(list.routers(0).requests(), static_cast<int64_t>(prompts.size()));
    EXPECT_EQ(list.routers(0).completion_tokens(), tokens);
  }
  auto metrics = HttpGet(cluster->metrics_url(), std::chrono::seconds(5));
  ASSERT_THAT(metrics, IsOk());
  EXPECT_NE(metrics->find(absl::StrCat("moe_layers_executed_total ", layers, "\n")), std::string::npos) << *metrics;
  auto remove = [&](const std::string& name) {
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineAfter(kCallDeadline));
    v1::RemoveLayerRouterRequest req;
    req.set_name(name);
    v1::RemoveLayerRouterResponse resp;
    return admin->RemoveLayerRouter(&ctx, req, &resp);
  };
  const grpc::Status removed = remove("mixed");
  ASSERT_TRUE(removed.ok()) << removed.error_message();
  EXPECT_EQ(remove("mixed").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(complete(prompts[0], "mixed", &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(complete(prompts[0], "", &r).ok());
  EXPECT_DOUBLE_EQ(r.usage().layers_per_token(), 3.0);
  EXPECT_THAT(cluster->Stop(), IsOk());
  std::filesystem::remove_all(dir);
}


// The communicator seam of the NCCL data plane, exercised without a GPU: the coordinator makes one id
// per epoch (the real ncclGetUniqueId where NCCL is built, as in CI) and hands the same bytes to every
// worker of that epoch; a membership change makes a new one. The workers (in this process) build an
// in-process exchange per epoch where NCCL would join the communicator, so the cluster still serves.
TEST(ClusterDataPlaneTest, TheCoordinatorHandsEveryWorkerOneFreshCommunicatorIdPerEpoch) {
  struct Handed { int rank; std::string id; };
  absl::Mutex mutex;
  std::map<uint64_t, std::vector<Handed>> handed;  // by epoch
  std::map<uint64_t, std::shared_ptr<InProcessExchangeGroup>> groups;
  auto factory = [&](int rank, const ShardMap& map, const std::string& id) -> absl::StatusOr<std::shared_ptr<Exchange>> {
    absl::MutexLock lock(&mutex);
    handed[map.epoch].push_back({rank, id});
    auto& group = groups[map.epoch];
    if (group == nullptr) group = std::make_shared<InProcessExchangeGroup>(map.num_workers);
    return std::shared_ptr<Exchange>(group, group->Member(rank));
  };
  CoordinatorServerOptions co;
  co.coordinator.model_dir = ModelDir();
  co.coordinator.num_workers = 2;
  co.metrics_port = -1;
  int counter = 0;
  if (NcclDataPlaneBuilt()) {
    co.data_plane = "nccl";  // the product's own id factory
  } else {
    co.coordinator.make_communicator_id = [&counter]() -> absl::StatusOr<std::string> {
      return absl::StrCat("communicator-", ++counter);
    };
  }
  std::atomic<bool> stop_coordinator{false};
  std::promise<std::string> control_plane;
  std::thread coordinator([&] {
    RunCoordinator(co, stop_coordinator, [&](const std::string& a) { control_plane.set_value(a); });
  });
  auto address = control_plane.get_future();
  ASSERT_EQ(address.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  const std::string cluster = address.get();
  WorkerServerOptions wo;
  wo.coordinator = cluster;
  wo.model_dir = ModelDir();
  wo.make_exchange = factory;
  std::atomic<bool> stop_worker[2] = {false, false};
  std::vector<std::thread> workers;
  for (int i = 0; i < 2; ++i) workers.emplace_back([&, i] { RunWorker(wo, stop_worker[i]); });
  auto stop_all = absl::MakeCleanup([&] {
    stop_worker[0] = stop_worker[1] = true;
    for (auto& w : workers) if (w.joinable()) w.join();
    stop_coordinator = true;
    coordinator.join();
  });

  // Waits (bounded) until `done` holds for what was handed out.
  auto wait_for = [&](const std::function<bool()>& done) {
    absl::MutexLock lock(&mutex);
    return mutex.AwaitWithTimeout(absl::Condition(&done, &std::function<bool()>::operator()), absl::Seconds(60));
  };
  uint64_t first = 0;
  ASSERT_TRUE(wait_for([&] {
    for (const auto& [epoch, h] : handed) {
      if (h.size() == 2) first = epoch;
    }
    return first != 0;
  }));
  std::string first_id;
  {
    absl::MutexLock lock(&mutex);
    const auto& h = handed[first];
    EXPECT_EQ(h[0].id, h[1].id) << "every worker of an epoch joins the same communicator";
    EXPECT_FALSE(h[0].id.empty());
    if (NcclDataPlaneBuilt()) {
      EXPECT_EQ(h[0].id.size(), 128u) << "an ncclUniqueId";
    }
    first_id = h[0].id;
  }
  // The cluster serves through the data plane built from those ids, once it reports SERVING.
  {
    auto health = grpc::health::v1::Health::NewStub(grpc::CreateChannel(cluster, grpc::InsecureChannelCredentials()));
    grpc::ClientContext watch_ctx;
    watch_ctx.set_deadline(DeadlineAfter(std::chrono::seconds(60)));
    auto watch = health->Watch(&watch_ctx, grpc::health::v1::HealthCheckRequest());
    grpc::health::v1::HealthCheckResponse state;
    bool serving = false;
    while (!serving && watch->Read(&state)) serving = state.status() == grpc::health::v1::HealthCheckResponse::SERVING;
    watch_ctx.TryCancel();
    watch->Finish();
    ASSERT_TRUE(serving);
  }
  auto stub = v1::Inference::NewStub(grpc::CreateChannel(cluster, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineAfter(kCallDeadline));
  v1::GenerateRequest request = Request(Prompt(3), 6);
  request.set_ignore_eos(true);
  v1::GenerateResponse response;
  const grpc::Status served = stub->Complete(&ctx, request, &response);
  ASSERT_TRUE(served.ok()) << served.error_message();
  EXPECT_EQ(response.token_ids_size(), 6);

  // Worker 1 leaves: the survivor is given a new epoch, and with it a new communicator.
  stop_worker[1] = true;
  workers[1].join();
  ASSERT_TRUE(wait_for([&] {
    for (const auto& [epoch, h] : handed) {
      if (epoch > first && !h.empty() && h[0].id != first_id) return true;
    }
    return false;
  })) << "no new communicator id after the membership change";
}

}  // namespace
}  // namespace moe
