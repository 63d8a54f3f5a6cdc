// moe-mpi-cluster: every rank of an mpirun (or srun) launch runs this binary; the role comes from the
// rank. Rank 0 is the coordinator, ranks 1..N are workers 0..N-1. The coordinator's control-plane
// address reaches the workers by MPI_Bcast at start-up; workers then register with the worker id of
// their MPI rank, and the experts' all-to-all runs over MPI_Alltoallv among the worker ranks
// (--exchange grpc keeps it on gRPC). Use cluster/run-mpi, which also sets what Open MPI needs to run
// as root.
//   mpirun -np N+1 moe-mpi-cluster --model DIR [--port P] [--exchange mpi|grpc] [coordinator/worker flags]
//
// MPI membership is fixed: if a rank dies, Open MPI ends the job, and the coordinator's clients get
// UNAVAILABLE at once (a dead worker cannot be replaced inside one MPI job; see cluster/run-local for
// the gRPC cluster that re-places experts on the survivors).
#include <mpi.h>
#include <unistd.h>

#include <csignal>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/flags.h"
#include "common/memory.h"
#include "common/log.h"
#include "coordinator/coordinator_server.h"
#include "exchange/mpi_exchange.h"
#include "worker/worker_server.h"

ABSL_FLAG(std::string, exchange, "mpi", "the workers' all-to-all data plane: mpi or grpc");

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }
// Workers under MPI outlive the signal: mpirun delivers SIGTERM to every rank at once, and a worker that
// left before the coordinator's last step would strand its peers inside an MPI collective (which has no
// deadline). They exit once the coordinator, which finishes its step and stops, is gone
// (--orphan-timeout-ms), or when mpirun ends the job.
std::atomic<bool> g_never{false};

// Sends (rank 0) or receives (others) a string over MPI_COMM_WORLD.
std::string BroadcastString(std::string value) {
  int length = static_cast<int>(value.size());
  MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD);
  value.resize(static_cast<size_t>(length));
  MPI_Bcast(value.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD);
  return value;
}
}  // namespace

int main(int argc, char** argv) {
  moe::KeepLargeBuffersInTheHeap();
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
  moe::ParseFlags(argc, argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  moe::LogProgramName() = rank == 0 ? "moe-mpi-cluster[coordinator]" : absl::StrCat("moe-mpi-cluster[worker ", rank - 1, "]");
  const std::string exchange = absl::GetFlag(FLAGS_exchange);
  std::string error;
  if (provided < MPI_THREAD_SERIALIZED) error = "the MPI library does not provide MPI_THREAD_SERIALIZED";
  if (size < 2) error = "needs at least 2 ranks (a coordinator and a worker): mpirun -np N+1";
  if (exchange != "mpi" && exchange != "grpc") error = "--exchange must be mpi or grpc";
  if (!error.empty()) {
    if (rank == 0) moe::LogLine(error);
    MPI_Finalize();
    return 2;
  }
  std::signal(SIGINT, rank == 0 ? OnSignal : SIG_IGN);
  std::signal(SIGTERM, rank == 0 ? OnSignal : SIG_IGN);
  std::signal(SIGPIPE, SIG_IGN);
  MPI_Comm workers;  // ranks 1..N, in rank order
  MPI_Comm_split(MPI_COMM_WORLD, rank == 0 ? MPI_UNDEFINED : 1, rank, &workers);

  int code = 0;
  if (rank == 0) {
    moe::CoordinatorServerOptions options = moe::CoordinatorServerOptionsFromFlags();
    options.coordinator.num_workers = size - 1;
    options.coordinator.fixed_membership = exchange == "mpi";
    bool announced = false;
    code = moe::RunCoordinator(options, g_stop, [&](const std::string& address) {
      BroadcastString(address);
      announced = true;
    });
    // The workers wait for the address: a coordinator that failed before announcing it ends the job.
    if (!announced) MPI_Abort(MPI_COMM_WORLD, code == 0 ? 1 : code);
  } else {
    moe::WorkerServerOptions options = moe::WorkerServerOptionsFromFlags();
    options.coordinator = BroadcastString("");
    std::cout << "worker pid " << getpid() << std::endl;  // as run-local prints it (fault tests)
    options.requested_slot = rank - 1;
    if (exchange == "mpi") {
      options.make_exchange = [workers](int map_rank, const moe::ShardMap& map, const std::string& /*communicator_id*/)
          -> absl::StatusOr<std::shared_ptr<moe::Exchange>> {
        auto mpi = std::make_shared<moe::MpiExchange>(workers);
        if (map.num_workers != mpi->size() || map_rank != mpi->rank()) {
          return absl::FailedPreconditionError(absl::StrCat(
              "the MPI data plane has fixed membership (", mpi->size(), " workers, this one rank ", mpi->rank(),
              "); the shard map has ", map.num_workers, " workers and gives this one rank ", map_rank));
        }
        return mpi;
      };
    }
    // RunWorker returns when the coordinator is gone: under MPI that is how the job ends.
    moe::RunWorker(options, g_never);
    MPI_Comm_free(&workers);
  }
  MPI_Finalize();
  return code;
}
