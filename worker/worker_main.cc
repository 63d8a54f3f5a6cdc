// moe-worker: one worker process. Serves the Worker service, registers with the coordinator, heartbeats,
// and exits when the coordinator stays unreachable past --orphan-timeout-ms or on SIGINT/SIGTERM.
//   moe-worker --coordinator HOST:PORT --model DIR [--listen 127.0.0.1:0] [--threads N]
#include <csignal>

#include "common/flags.h"
#include "common/memory.h"
#include "common/log.h"
#include "worker/worker_server.h"

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }
}  // namespace

int main(int argc, char** argv) {
  moe::KeepLargeBuffersInTheHeap();
  moe::ParseFlags(argc, argv);
  moe::LogProgramName() = "moe-worker";
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGPIPE, SIG_IGN);
  return moe::RunWorker(moe::WorkerServerOptionsFromFlags(), g_stop);
}
