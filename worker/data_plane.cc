#include "worker/data_plane.h"

#include "absl/strings/str_cat.h"
#if MOE_HAVE_NCCL
#include "exchange/nccl/nccl_exchange.h"
#endif

namespace moe {

bool NcclDataPlaneBuilt() { return MOE_HAVE_NCCL != 0; }

int CudaDeviceCount() {
  int devices = 0;
#if MOE_HAVE_NCCL
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
#endif
  return devices;
}

absl::Status CheckDataPlane(const std::string& data_plane) {
  if (data_plane == "grpc") return absl::OkStatus();
  if (data_plane == "nccl") {
    if (NcclDataPlaneBuilt()) return absl::OkStatus();
    return absl::InvalidArgumentError("data plane nccl: this build has no NCCL backend (CUDA toolkit or NCCL was not "
                                      "found when it was configured)");
  }
  return absl::InvalidArgumentError(absl::StrCat("data plane must be grpc or nccl, not \"", data_plane, "\""));
}

std::function<absl::StatusOr<std::string>()> CommunicatorIdFactory(const std::string& data_plane) {
#if MOE_HAVE_NCCL
  if (data_plane == "nccl") return NewNcclCommunicatorId;
#endif
  return {};
}

WorkerService::ExchangeFactory ExchangeFactoryFor(const std::string& data_plane, int cuda_device) {
#if MOE_HAVE_NCCL
  if (data_plane == "nccl") {
    return [cuda_device](int rank, const ShardMap& map, const std::string& communicator_id)
               -> absl::StatusOr<std::shared_ptr<Exchange>> {
      if (communicator_id.empty()) {
        return absl::FailedPreconditionError(
            "this worker runs the NCCL data plane, but the shard map came without a communicator id: start the "
            "coordinator with the same --data-plane");
      }
      auto id = ParseNcclCommunicatorId(communicator_id);
      if (!id.ok()) return id.status();
      // A worker without a GPU refuses the map (FAILED_PRECONDITION): the coordinator reports it instead
      // of counting the worker as dead and trying again.
      const int devices = CudaDeviceCount();
      if (devices == 0) {
        return absl::FailedPreconditionError("the NCCL data plane needs a CUDA device, and this worker has none");
      }
      const int device = cuda_device >= 0 ? cuda_device : rank % devices;
      auto exchange = NcclExchange::Create(*id, rank, map.num_workers, device);
      if (!exchange.ok()) return exchange.status();
      return std::shared_ptr<Exchange>(std::move(*exchange));
    };
  }
#else
  (void)cuda_device;
#endif
  (void)data_plane;
  return {};
}

}  // namespace moe
