// moe-worker: one worker process. Serves the Worker service, registers with the coordinator, heartbeats,
// and exits when the coordinator stays unreachable past --orphan-timeout-ms or on SIGINT/SIGTERM.
//   moe-worker --coordinator HOST:PORT --model DIR [--listen 127.0.0.1:0] [--threads N]
#include <csignal>
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/flags.h"
#include "proto/grpc_util.h"
#include "worker/worker_service.h"

ABSL_FLAG(std::string, coordinator, "", "coordinator address");
ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(std::string, listen, "127.0.0.1:0", "address to serve on (port 0 picks one)");
ABSL_FLAG(std::string, advertise_host, "127.0.0.1", "host peers use to reach this worker");
ABSL_FLAG(int32_t, threads, 1, "compute threads");
ABSL_FLAG(int32_t, heartbeat_ms, 300, "heartbeat period");
ABSL_FLAG(int32_t, orphan_timeout_ms, 5000, "exit when the coordinator is unreachable this long");
ABSL_FLAG(int32_t, exchange_timeout_ms, 10000, "deadline of one all-to-all");

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }
}  // namespace

int main(int argc, char** argv) {
  moe::ParseFlags(argc, argv);
  if (absl::GetFlag(FLAGS_coordinator).empty() || absl::GetFlag(FLAGS_model).empty()) {
    std::cerr << "moe-worker: --coordinator and --model are required\n";
    return 1;
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);

  moe::WorkerService service({absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_threads),
                              std::chrono::milliseconds(absl::GetFlag(FLAGS_exchange_timeout_ms))});
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(-1);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "moe-worker: cannot listen on " << absl::GetFlag(FLAGS_listen) << "\n";
    return 1;
  }
  const std::string address = absl::GetFlag(FLAGS_advertise_host) + ":" + std::to_string(port);

  auto stub = moe::v1::Coordinator::NewStub(grpc::CreateChannel(absl::GetFlag(FLAGS_coordinator), grpc::InsecureChannelCredentials()));
  const auto orphan = std::chrono::milliseconds(absl::GetFlag(FLAGS_orphan_timeout_ms));
  auto last_contact = std::chrono::steady_clock::now();
  // Registers, then heartbeats; registers again when the coordinator no longer counts this worker as a
  // member (it was declared dead, e.g. after a stall): it is then given a shard of a new map.
  while (!g_stop) {
    int worker_id = -1;
    while (!g_stop && worker_id < 0) {
      grpc::ClientContext ctx;
      ctx.set_deadline(moe::DeadlineAfter(std::chrono::milliseconds(1000)));
      ctx.set_wait_for_ready(true);
      moe::v1::RegisterRequest req;
      req.set_address(address);
      req.set_pid(getpid());
      moe::v1::RegisterResponse resp;
      grpc::Status s = stub->Register(&ctx, req, &resp);
      if (s.ok()) {
        worker_id = resp.worker_id();
      } else if (s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED && s.error_code() != grpc::StatusCode::UNAVAILABLE) {
        std::cerr << "moe-worker: registration refused: " << s.error_message() << "\n";
        return 1;
      } else if (std::chrono::steady_clock::now() - last_contact > orphan) {
        std::cerr << "moe-worker: coordinator " << absl::GetFlag(FLAGS_coordinator) << " unreachable\n";
        return 1;
      }
    }
    if (g_stop) break;
    std::cerr << "moe-worker: registered as worker " << worker_id << " at " << address << std::endl;
    last_contact = std::chrono::steady_clock::now();
    while (!g_stop) {
      std::this_thread::sleep_for(std::chrono::milliseconds(absl::GetFlag(FLAGS_heartbeat_ms)));  // heartbeat period, not a sync
      grpc::ClientContext ctx;
      ctx.set_deadline(moe::DeadlineAfter(std::chrono::milliseconds(1000)));
      moe::v1::HeartbeatRequest req;
      req.set_worker_id(worker_id);
      moe::v1::HeartbeatResponse resp;
      grpc::Status s = stub->Heartbeat(&ctx, req, &resp);
      if (s.ok()) {
        last_contact = std::chrono::steady_clock::now();
      } else if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        std::cerr << "moe-worker: " << s.error_message() << std::endl;
        last_contact = std::chrono::steady_clock::now();
        break;
      } else if (std::chrono::steady_clock::now() - last_contact > orphan) {
        std::cerr << "moe-worker: lost the coordinator; exiting\n";
        g_stop = true;
      }
    }
  }
  server->Shutdown(moe::DeadlineAfter(std::chrono::seconds(2)));
  return 0;
}
