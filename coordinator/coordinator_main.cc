// moe-coordinator: the cluster's front door. Serves moe.v1.Inference (plus grpc.health.v1.Health and
// server reflection) and the internal Coordinator service on --host:--port, waits for --workers workers
// to register, places the experts, and prints "listening on HOST:PORT" once it serves requests.
// Prometheus metrics: GET http://HOST:METRICS_PORT/metrics. Stops cleanly on SIGINT/SIGTERM.
#include <csignal>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/flags.h"
#include "common/log.h"
#include "coordinator/inference_service.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "proto/grpc_util.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(std::string, host, "127.0.0.1", "address to serve on");
ABSL_FLAG(int32_t, port, 0, "gRPC port (0 picks one)");
ABSL_FLAG(int32_t, metrics_port, 0, "Prometheus metrics port (0 picks one, -1 disables)");
ABSL_FLAG(int32_t, workers, 1, "number of workers to wait for");
ABSL_FLAG(int32_t, startup_timeout_ms, 120000, "deadline for the workers to register and load");
ABSL_FLAG(int32_t, max_queued, 256, "waiting requests before RESOURCE_EXHAUSTED");
ABSL_FLAG(int32_t, max_running, 64, "sequences in the running batch");
ABSL_FLAG(int64_t, max_batch_tokens, 4096, "prompt tokens admitted per step");
ABSL_FLAG(int32_t, heartbeat_timeout_ms, 1500, "a worker silent this long is dead");
ABSL_FLAG(double, replicate_above, 0.0, "replicate experts loaded above this multiple of the mean (0 = off)");
ABSL_FLAG(std::string, expert_load, "", "measured expert load for placement (moe-eval --json output, or {\"expert_load\": [[...]]})");

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }
int Fail(const std::string& m) {
  std::cerr << "moe-coordinator: " << m << std::endl;
  return 1;
}
}  // namespace

int main(int argc, char** argv) {
  moe::ParseFlags(argc, argv);
  moe::LogProgramName() = "moe-coordinator";
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGPIPE, SIG_IGN);

  moe::CoordinatorOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.num_workers = absl::GetFlag(FLAGS_workers);
  options.max_queued = absl::GetFlag(FLAGS_max_queued);
  options.max_running = absl::GetFlag(FLAGS_max_running);
  options.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  options.heartbeat_timeout = std::chrono::milliseconds(absl::GetFlag(FLAGS_heartbeat_timeout_ms));
  options.placement.replicate_above = absl::GetFlag(FLAGS_replicate_above);
  if (options.model_dir.empty()) return Fail("--model is required");
  if (!absl::GetFlag(FLAGS_expert_load).empty()) {
    auto config = moe::ModelConfig::FromFile(options.model_dir + "/config.json");
    if (!config.ok()) return Fail(config.status().ToString());
    auto load = moe::ReadExpertLoadFile(absl::GetFlag(FLAGS_expert_load), *config);
    if (!load.ok()) return Fail(load.status().ToString());
    options.expert_load = std::move(*load);
  }
  auto coordinator = moe::Coordinator::Create(options);
  if (!coordinator.ok()) return Fail(coordinator.status().ToString());

  std::unique_ptr<moe::Tokenizer> tokenizer;
  const std::string tok_path = options.model_dir + "/tokenizer.model";
  if (FILE* f = std::fopen(tok_path.c_str(), "rb")) {
    std::fclose(f);
    auto t = moe::Tokenizer::Load(tok_path);
    if (!t.ok()) return Fail(t.status().ToString());
    tokenizer = std::move(*t);
  }
  moe::InferenceService inference(coordinator->get(), std::move(tokenizer));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  const std::string host = absl::GetFlag(FLAGS_host);
  builder.AddListeningPort(host + ":" + std::to_string(absl::GetFlag(FLAGS_port)), grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&inference);
  builder.RegisterService(coordinator->get());
  builder.SetMaxReceiveMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) return Fail("cannot listen on " + host + ":" + std::to_string(absl::GetFlag(FLAGS_port)));
  server->GetHealthCheckService()->SetServingStatus(false);

  moe::MetricsHttpServer metrics;
  int metrics_port = -1;
  if (absl::GetFlag(FLAGS_metrics_port) >= 0) {
    auto p = metrics.Start(host, absl::GetFlag(FLAGS_metrics_port), [c = coordinator->get()] { return c->metrics().Render(); });
    if (!p.ok()) return Fail(p.status().ToString());
    metrics_port = *p;
  }
  std::cout << "control plane on " << host << ":" << port << std::endl;
  // Wait in slices so a signal during start-up is honoured.
  absl::Status ready = absl::DeadlineExceededError("start-up");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(absl::GetFlag(FLAGS_startup_timeout_ms));
  while (!g_stop && std::chrono::steady_clock::now() < deadline) {
    ready = (*coordinator)->WaitUntilReady(std::chrono::milliseconds(200));
    if (ready.ok() || ready.code() != absl::StatusCode::kDeadlineExceeded) break;
  }
  if (!ready.ok()) {
    (*coordinator)->Shutdown();
    server->Shutdown(moe::DeadlineAfter(std::chrono::seconds(2)));
    return Fail(g_stop ? "interrupted during start-up" : ready.ToString());
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  std::cout << "listening on " << host << ":" << port << std::endl;
  if (metrics_port >= 0) std::cout << "metrics on http://" << host << ":" << metrics_port << "/metrics" << std::endl;
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));  // signal poll, not a sync
  std::cerr << "moe-coordinator: stopping" << std::endl;
  server->GetHealthCheckService()->SetServingStatus(false);
  (*coordinator)->Shutdown();
  server->Shutdown(moe::DeadlineAfter(std::chrono::seconds(3)));
  metrics.Stop();
  return 0;
}
