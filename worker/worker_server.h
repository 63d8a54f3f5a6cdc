// A worker process's life, shared by moe-worker and the mpirun launcher: serve the Worker service,
// register with the coordinator, heartbeat, register again when no longer counted as a member, and
// exit when the coordinator stays unreachable or `stop` is set.
#ifndef MOE_WORKER_WORKER_SERVER_H_
#define MOE_WORKER_WORKER_SERVER_H_

#include <atomic>
#include <chrono>
#include <string>

#include "worker/worker_service.h"

namespace moe {

struct WorkerServerOptions {
  std::string coordinator;  // the coordinator's control plane, HOST:PORT
  std::string model_dir;
  std::string listen = "127.0.0.1:0";        // port 0 picks one
  std::string advertise_host;  // what peers and the coordinator dial; empty: DialableHost(listen host)
  int threads = 1;
  std::chrono::milliseconds heartbeat_period{300};
  std::chrono::milliseconds orphan_timeout{5000};
  std::chrono::milliseconds exchange_timeout{10000};
  int requested_slot = -1;  // >= 0: ask for this worker id (MPI: the rank in the data plane)
  std::string data_plane = "grpc";  // worker/data_plane.h
  WorkerService::ExchangeFactory make_exchange;  // unset: gRPC data plane
};

// From the command-line flags --coordinator, --model, --listen, --advertise-host, --threads,
// --heartbeat-ms, --orphan-timeout-ms, --exchange-timeout-ms, --data-plane, --cuda-device (defined by
// this library).
WorkerServerOptions WorkerServerOptionsFromFlags();

// Runs until `stop` or the coordinator is lost; returns the process exit code (0: stopped cleanly).
int RunWorker(const WorkerServerOptions& options, const std::atomic<bool>& stop);

}  // namespace moe

#endif  // MOE_WORKER_WORKER_SERVER_H_
