// The coordinator process's life, shared by moe-coordinator and the mpirun launcher: serve
// moe.v1.Inference (with grpc.health.v1 and server reflection) and the internal Coordinator service,
// wait for the workers, print "control plane on", "listening on" and "metrics on" lines on stdout, and
// shut down cleanly when `stop` is set.
#ifndef MOE_COORDINATOR_COORDINATOR_SERVER_H_
#define MOE_COORDINATOR_COORDINATOR_SERVER_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "coordinator/coordinator.h"

namespace moe {

struct CoordinatorServerOptions {
  CoordinatorOptions coordinator;
  std::string host = "127.0.0.1";
  int port = 0;          // 0 picks one
  int metrics_port = 0;  // 0 picks one, -1 disables
  std::chrono::milliseconds startup_timeout{120000};
  std::string expert_load_file;  // measured load for placement (moe-eval --json output or a load table)
  std::vector<std::string> expert_maps;  // task expert map directories loaded once the workers are up
  std::vector<std::string> layer_routers;  // layer router directories loaded once the workers are up
  std::string data_plane = "grpc";  // worker/data_plane.h: nccl makes a communicator id per epoch
};

// From the command-line flags (defined by this library): --model, --host, --port, --metrics-port,
// --workers, --startup-timeout-ms, --max-queued, --max-running, --max-batch-tokens,
// --heartbeat-timeout-ms, --replicate-above, --expert-load, --expert-maps, --layer-routers, and the
// worker library's --data-plane.
CoordinatorServerOptions CoordinatorServerOptionsFromFlags();

// Runs until `stop`; returns the process exit code. `on_control_plane` (optional) is called with the
// control-plane address as soon as workers can register there.
int RunCoordinator(const CoordinatorServerOptions& options, const std::atomic<bool>& stop,
                   const std::function<void(const std::string&)>& on_control_plane = {});

}  // namespace moe

#endif  // MOE_COORDINATOR_COORDINATOR_SERVER_H_
