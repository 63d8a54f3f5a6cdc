#include "worker/worker_server.h"

#include <unistd.h>

#include <thread>

#include "absl/flags/flag.h"
#include "common/log.h"
#include "exchange/grpc_exchange.h"
#include "worker/data_plane.h"
#include "proto/grpc_util.h"

ABSL_FLAG(std::string, coordinator, "", "coordinator control-plane address");
ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(std::string, listen, "127.0.0.1:0", "worker address to serve on (port 0 picks one)");
ABSL_FLAG(std::string, advertise_host, "", "host peers use to reach this worker (empty: the --listen host, or "
          "this machine's name when listening on every interface)");
ABSL_FLAG(int32_t, threads, 1, "compute threads per worker");
ABSL_FLAG(int32_t, heartbeat_ms, 300, "heartbeat period");
ABSL_FLAG(int32_t, orphan_timeout_ms, 5000, "a worker exits when the coordinator is unreachable this long");
ABSL_FLAG(int32_t, exchange_timeout_ms, 10000, "deadline of one all-to-all");
ABSL_FLAG(std::string, data_plane, "grpc",
          "the workers' all-to-all data plane: grpc, or nccl (builds with CUDA + NCCL; give the coordinator and "
          "every worker the same choice)");
ABSL_FLAG(int32_t, cuda_device, -1, "nccl data plane: the CUDA device of this worker (-1: worker rank % devices)");

namespace moe {

WorkerServerOptions WorkerServerOptionsFromFlags() {
  WorkerServerOptions o;
  o.coordinator = absl::GetFlag(FLAGS_coordinator);
  o.model_dir = absl::GetFlag(FLAGS_model);
  o.listen = absl::GetFlag(FLAGS_listen);
  o.advertise_host = absl::GetFlag(FLAGS_advertise_host);
  o.threads = absl::GetFlag(FLAGS_threads);
  o.heartbeat_period = std::chrono::milliseconds(absl::GetFlag(FLAGS_heartbeat_ms));
  o.orphan_timeout = std::chrono::milliseconds(absl::GetFlag(FLAGS_orphan_timeout_ms));
  o.exchange_timeout = std::chrono::milliseconds(absl::GetFlag(FLAGS_exchange_timeout_ms));
  o.data_plane = absl::GetFlag(FLAGS_data_plane);
  o.make_exchange = ExchangeFactoryFor(o.data_plane, absl::GetFlag(FLAGS_cuda_device));
  return o;
}

int RunWorker(const WorkerServerOptions& options, const std::atomic<bool>& stop) {
  if (options.coordinator.empty() || options.model_dir.empty()) {
    return Fail("--coordinator and --model are required");
  }
  if (absl::Status s = CheckDataPlane(options.data_plane); !s.ok()) return Fail(s.message());
  WorkerService service({options.model_dir, options.threads, options.exchange_timeout, options.make_exchange});
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  ConfigureInternalServer(&builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) return Fail(absl::StrCat("cannot listen on ", options.listen));
  std::string advertise = options.advertise_host;
  if (advertise.empty()) advertise = DialableHost(options.listen.substr(0, options.listen.rfind(':')));
  const std::string address = absl::StrCat(advertise, ":", port);

  auto stub = v1::Coordinator::NewStub(grpc::CreateChannel(options.coordinator, grpc::InsecureChannelCredentials()));
  auto last_contact = std::chrono::steady_clock::now();
  int exit_code = 0;
  // Registers, then heartbeats; registers again when the coordinator no longer counts this worker as a
  // member (it was declared dead, e.g. after a stall): it is then given a shard of a new map.
  while (!stop && exit_code == 0) {
    int worker_id = -1;
    while (!stop && worker_id < 0 && exit_code == 0) {
      grpc::ClientContext ctx;
      ctx.set_deadline(DeadlineAfter(std::chrono::milliseconds(1000)));
      ctx.set_wait_for_ready(true);
      v1::RegisterRequest req;
      req.set_address(address);
      req.set_pid(getpid());
      if (options.requested_slot >= 0) req.set_requested_slot(options.requested_slot);
      v1::RegisterResponse resp;
      grpc::Status s = stub->Register(&ctx, req, &resp);
      if (s.ok()) {
        worker_id = resp.worker_id();
      } else if (s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED && s.error_code() != grpc::StatusCode::UNAVAILABLE) {
        LogLine(absl::StrCat("registration refused: ", s.error_message()));
        exit_code = 1;
      } else if (std::chrono::steady_clock::now() - last_contact > options.orphan_timeout) {
        LogLine(absl::StrCat("coordinator ", options.coordinator, " unreachable"));
        exit_code = 1;
      }
    }
    if (worker_id < 0) break;
    LogLine(absl::StrCat("registered as worker ", worker_id, " at ", address));
    last_contact = std::chrono::steady_clock::now();
    while (!stop) {
      std::this_thread::sleep_for(options.heartbeat_period);  // heartbeat period, not a sync
      grpc::ClientContext ctx;
      ctx.set_deadline(DeadlineAfter(std::chrono::milliseconds(1000)));
      v1::HeartbeatRequest req;
      req.set_worker_id(worker_id);
      v1::HeartbeatResponse resp;
      grpc::Status s = stub->Heartbeat(&ctx, req, &resp);
      if (s.ok()) {
        last_contact = std::chrono::steady_clock::now();
      } else if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        LogLine(s.error_message());
        last_contact = std::chrono::steady_clock::now();
        break;
      } else if (std::chrono::steady_clock::now() - last_contact > options.orphan_timeout) {
        LogLine("lost the coordinator; exiting");
        exit_code = 1;
        break;
      }
    }
  }
  service.StopDataPlane();
  server->Shutdown(DeadlineAfter(std::chrono::seconds(2)));
  return stop ? 0 : exit_code;
}

}  // namespace moe
