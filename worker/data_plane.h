// Which data plane the workers' all-to-alls run on when the cluster is started as separate processes
// (moe-coordinator + moe-worker, run-local, Slurm without MPI): "grpc" (default) or "nccl" (builds
// with CUDA + NCCL only). moe-mpi-cluster chooses MPI itself. The one place these names are read.
#ifndef MOE_WORKER_DATA_PLANE_H_
#define MOE_WORKER_DATA_PLANE_H_

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "worker/worker_service.h"

namespace moe {

// True when this build has the NCCL backend.
bool NcclDataPlaneBuilt();
// CUDA devices this process sees (0 in builds without NCCL).
int CudaDeviceCount();

// OK for a name this build can run; INVALID_ARGUMENT naming the choices otherwise.
absl::Status CheckDataPlane(const std::string& data_plane);

// The coordinator's side: makes one communicator id per epoch ("nccl": ncclGetUniqueId), or an empty
// function when the data plane needs none ("grpc").
std::function<absl::StatusOr<std::string>()> CommunicatorIdFactory(const std::string& data_plane);

// The worker's side: builds the Exchange for each shard map ("nccl": joins the epoch's communicator on
// CUDA device `cuda_device`, or on worker rank % device count when it is negative), or an empty
// function for the default gRPC data plane. A map without a communicator id is refused
// (FAILED_PRECONDITION: the coordinator does not run the same data plane).
WorkerService::ExchangeFactory ExchangeFactoryFor(const std::string& data_plane, int cuda_device);

}  // namespace moe

#endif  // MOE_WORKER_DATA_PLANE_H_
