#include "coordinator/coordinator_server.h"

#include <cstdio>
#include <iostream>
#include <thread>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "checkpoint/tokenizer.h"
#include "common/log.h"
#include "coordinator/inference_service.h"
#include "coordinator/router_admin_service.h"
#include "worker/data_plane.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "proto/grpc_util.h"

ABSL_DECLARE_FLAG(std::string, model);  // defined by the worker library (every process has one model)
ABSL_DECLARE_FLAG(std::string, data_plane);  // the same choice as the workers' (worker library)
ABSL_FLAG(std::string, host, "127.0.0.1", "address the coordinator serves on");
ABSL_FLAG(int32_t, port, 0, "gRPC port (0 picks one)");
ABSL_FLAG(int32_t, metrics_port, 0, "Prometheus metrics port (0 picks one, -1 disables)");
ABSL_FLAG(int32_t, workers, 1, "number of workers to wait for");
ABSL_FLAG(int32_t, startup_timeout_ms, 120000, "deadline for the workers to register and load");
ABSL_FLAG(int32_t, max_queued, 256, "waiting requests before RESOURCE_EXHAUSTED");
ABSL_FLAG(int32_t, max_running, 64, "sequences in the running batch");
ABSL_FLAG(int64_t, max_batch_tokens, 4096, "prompt tokens admitted per step");
ABSL_FLAG(int32_t, heartbeat_timeout_ms, 1500, "a worker silent this long is dead");
ABSL_FLAG(double, replicate_above, 0.0, "replicate experts loaded above this multiple of the mean (0 = off)");
ABSL_FLAG(bool, task_maps_at_home, true,
          "place each task expert map on one home worker (with replicas of the experts it keeps) and run its "
          "requests there; false spreads its merged experts over the workers");
ABSL_FLAG(std::vector<std::string>, expert_maps, {},
          "task expert map directories (moe-prune output) to load once the workers are up; a glob-free comma list");
ABSL_FLAG(std::vector<std::string>, layer_routers, {},
          "Dr.LLM layer router directories (moe-layer-route output) to load once the workers are up; a comma list");
ABSL_FLAG(std::string, expert_load, "", "measured expert load for placement (moe-eval --json output, or {\"expert_load\": [[...]]})");

namespace moe {

CoordinatorServerOptions CoordinatorServerOptionsFromFlags() {
  CoordinatorServerOptions o;
  o.coordinator.model_dir = absl::GetFlag(FLAGS_model);
  o.coordinator.num_workers = absl::GetFlag(FLAGS_workers);
  o.coordinator.max_queued = absl::GetFlag(FLAGS_max_queued);
  o.coordinator.batch.max_running = absl::GetFlag(FLAGS_max_running);
  o.coordinator.batch.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  o.coordinator.heartbeat_timeout = std::chrono::milliseconds(absl::GetFlag(FLAGS_heartbeat_timeout_ms));
  o.coordinator.placement.replicate_above = absl::GetFlag(FLAGS_replicate_above);
  o.coordinator.placement.task_maps_at_home = absl::GetFlag(FLAGS_task_maps_at_home);
  o.host = absl::GetFlag(FLAGS_host);
  o.port = absl::GetFlag(FLAGS_port);
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  o.startup_timeout = std::chrono::milliseconds(absl::GetFlag(FLAGS_startup_timeout_ms));
  o.expert_load_file = absl::GetFlag(FLAGS_expert_load);
  o.expert_maps = absl::GetFlag(FLAGS_expert_maps);
  o.layer_routers = absl::GetFlag(FLAGS_layer_routers);
  o.data_plane = absl::GetFlag(FLAGS_data_plane);
  return o;
}

int RunCoordinator(const CoordinatorServerOptions& server_options, const std::atomic<bool>& stop,
                   const std::function<void(const std::string&)>& on_control_plane) {
  CoordinatorOptions options = server_options.coordinator;
  if (options.model_dir.empty()) return Fail("--model is required");
  if (absl::Status s = CheckDataPlane(server_options.data_plane); !s.ok()) return Fail(s.message());
  if (!options.make_communicator_id) options.make_communicator_id = CommunicatorIdFactory(server_options.data_plane);
  if (!server_options.expert_load_file.empty()) {
    auto config = ModelConfig::FromFile(options.model_dir + "/config.json");
    if (!config.ok()) return Fail(config.status().ToString());
    auto load = ReadExpertLoadFile(server_options.expert_load_file, *config);
    if (!load.ok()) return Fail(load.status().ToString());
    options.expert_load = std::move(*load);
  }
  auto coordinator = Coordinator::Create(options);
  if (!coordinator.ok()) return Fail(coordinator.status().ToString());

  std::unique_ptr<Tokenizer> tokenizer;
  const std::string tok_path = options.model_dir + "/tokenizer.model";
  if (FILE* f = std::fopen(tok_path.c_str(), "rb")) {
    std::fclose(f);
    auto t = Tokenizer::Load(tok_path);
    if (!t.ok()) return Fail(t.status().ToString());
    tokenizer = std::move(*t);
  }
  InferenceService inference(coordinator->get(), std::move(tokenizer));
  RouterAdminService router_admin(coordinator->get(), std::chrono::minutes(2));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  const std::string& host = server_options.host;
  const std::string listen = absl::StrCat(host, ":", server_options.port);
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&inference);
  builder.RegisterService(&router_admin);
  builder.RegisterService(coordinator->get());
  builder.SetMaxReceiveMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) return Fail("cannot listen on " + listen);
  server->GetHealthCheckService()->SetServingStatus(false);

  MetricsHttpServer metrics;
  int metrics_port = -1;
  if (server_options.metrics_port >= 0) {
    auto p = metrics.Start(host, server_options.metrics_port, [c = coordinator->get()] { return c->metrics().Render(); });
    if (!p.ok()) return Fail(p.status().ToString());
    metrics_port = *p;
  }
  const std::string address = absl::StrCat(DialableHost(host), ":", port);
  std::cout << "control plane on " << address << std::endl;
  if (on_control_plane) on_control_plane(address);
  // Wait in slices so a signal during start-up is honoured.
  absl::Status ready = absl::DeadlineExceededError("start-up");
  const auto deadline = std::chrono::steady_clock::now() + server_options.startup_timeout;
  while (!stop && std::chrono::steady_clock::now() < deadline) {
    ready = (*coordinator)->WaitUntilReady(std::chrono::milliseconds(200));
    if (ready.ok() || ready.code() != absl::StatusCode::kDeadlineExceeded) break;
  }
  if (!ready.ok()) {
    (*coordinator)->Shutdown();
    server->Shutdown(DeadlineAfter(std::chrono::seconds(2)));
    return Fail(stop ? "interrupted during start-up" : ready.ToString());
  }
  for (const std::string& path : server_options.expert_maps) {
    auto info = (*coordinator)->LoadExpertMap(path, std::chrono::minutes(2));
    if (!info.ok()) {
      (*coordinator)->Shutdown();
      server->Shutdown(DeadlineAfter(std::chrono::seconds(2)));
      return Fail(absl::StrCat("expert map ", path, ": ", info.status().ToString()));
    }
    std::cout << "expert map " << info->name() << " loaded (home worker " << info->home_worker() << ")" << std::endl;
  }
  for (const std::string& path : server_options.layer_routers) {
    auto info = (*coordinator)->LoadLayerRouter(path, std::chrono::minutes(2));
    if (!info.ok()) {
      (*coordinator)->Shutdown();
      server->Shutdown(DeadlineAfter(std::chrono::seconds(2)));
      return Fail(absl::StrCat("layer router ", path, ": ", info.status().ToString()));
    }
    std::cout << "layer router " << info->name() << " loaded" << std::endl;
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  std::cout << "listening on " << address << std::endl;
  if (metrics_port >= 0) std::cout << "metrics on http://" << DialableHost(host) << ":" << metrics_port << "/metrics" << std::endl;
  while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));  // signal poll, not a sync
  LogLine("stopping");
  server->GetHealthCheckService()->SetServingStatus(false);
  (*coordinator)->Shutdown();
  server->Shutdown(DeadlineAfter(std::chrono::seconds(3)));
  metrics.Stop();
  return 0;
}

}  // namespace moe
