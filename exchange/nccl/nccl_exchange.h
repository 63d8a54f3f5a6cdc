// Exchange over NCCL: grouped ncclSend/ncclRecv between GPU buffers. Built when the CUDA toolkit and
// NCCL are found; runs only on a machine with a GPU. The communicator's unique id is created by one
// rank (ncclGetUniqueId) and handed to the others out of band (by the coordinator in the cluster).
#ifndef MOE_EXCHANGE_NCCL_NCCL_EXCHANGE_H_
#define MOE_EXCHANGE_NCCL_NCCL_EXCHANGE_H_

#include <cuda_runtime.h>
#include <nccl.h>

#include <memory>
#include <string>

#include "exchange/exchange.h"

namespace moe {

// The one place NCCL and CUDA results become absl::Status.
absl::Status NcclStatus(ncclResult_t r, const char* what);
absl::Status CudaStatus(cudaError_t e, const char* what);

// A fresh communicator id (ncclGetUniqueId; no GPU needed): 128 bytes to hand to every member. The
// calling process hosts NCCL's bootstrap root for it until the members have joined.
absl::StatusOr<std::string> NewNcclCommunicatorId();
// The id back from those bytes; INVALID_ARGUMENT if they are not one (wrong length).
absl::StatusOr<ncclUniqueId> ParseNcclCommunicatorId(const std::string& bytes);

class NcclExchange : public Exchange {
 public:
  // Joins the communicator `id` as `rank` of `size` on CUDA device `device`. UNAVAILABLE when there is
  // no usable GPU; INTERNAL with NCCL's message otherwise.
  static absl::StatusOr<std::unique_ptr<NcclExchange>> Create(const ncclUniqueId& id, int rank, int size, int device);
  ~NcclExchange() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  // Host buffers in and out, staged through device memory with one copy each way (the blocks are
  // contiguous); first the sizes, then the payloads, each as one NCCL group. `tag` only documents the
  // call order: NCCL orders collectives by issue order.
  absl::Status AllToAllV(uint64_t tag, const ExchangeBuffer& send, ExchangeBuffer* recv) override;

 private:
  NcclExchange() = default;
  absl::Status EnsureCapacity(void** buffer, size_t* capacity, size_t bytes);

  int rank_ = 0, size_ = 1, device_ = 0;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* send_dev_ = nullptr;
  void* recv_dev_ = nullptr;
  size_t send_capacity_ = 0, recv_capacity_ = 0;
};

}  // namespace moe

#endif  // MOE_EXCHANGE_NCCL_NCCL_EXCHANGE_H_
