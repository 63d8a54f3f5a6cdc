// moe-coordinator: the cluster's front door. Serves moe.v1.Inference (plus grpc.health.v1.Health and
// server reflection) and the internal Coordinator service on --host:--port, waits for --workers workers
// to register, places the experts, and prints "listening on HOST:PORT" once it serves requests.
// Prometheus metrics: GET http://HOST:METRICS_PORT/metrics. Stops cleanly on SIGINT/SIGTERM.
#include <csignal>

#include "common/flags.h"
#include "common/log.h"
#include "coordinator/coordinator_server.h"

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }
}  // namespace

int main(int argc, char** argv) {
  moe::ParseFlags(argc, argv);
  moe::LogProgramName() = "moe-coordinator";
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGPIPE, SIG_IGN);
  return moe::RunCoordinator(moe::CoordinatorServerOptionsFromFlags(), g_stop);
}
