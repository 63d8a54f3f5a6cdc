#include "exchange/nccl/nccl_exchange.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moe {

absl::Status NcclStatus(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
}

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

absl::StatusOr<std::string> NewNcclCommunicatorId() {
  ncclUniqueId id;
  MOE_RETURN_IF_ERROR(NcclStatus(ncclGetUniqueId(&id), "ncclGetUniqueId"));
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<ncclUniqueId> ParseNcclCommunicatorId(const std::string& bytes) {
  ncclUniqueId id;
  if (bytes.size() != sizeof(id.internal)) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL communicator id must be ", sizeof(id.internal),
                                                   " bytes (from the coordinator), got ", bytes.size()));
  }
  std::memcpy(id.internal, bytes.data(), bytes.size());
  return id;
}

absl::StatusOr<std::unique_ptr<NcclExchange>> NcclExchange::Create(const ncclUniqueId& id, int rank, int size,
                                                                   int device) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    return absl::UnavailableError("NCCL exchange: no CUDA device");
  }
  std::unique_ptr<NcclExchange> ex(new NcclExchange());
  ex->rank_ = rank;
  ex->size_ = size;
  ex->device_ = device;
  MOE_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "cudaSetDevice"));
  MOE_RETURN_IF_ERROR(CudaStatus(cudaStreamCreate(&ex->stream_), "cudaStreamCreate"));
  MOE_RETURN_IF_ERROR(NcclStatus(ncclCommInitRank(&ex->comm_, size, id, rank), "ncclCommInitRank"));
  return ex;
}

NcclExchange::~NcclExchange() {
  if (comm_ != nullptr) ncclCommDestroy(comm_);
  if (send_dev_ != nullptr) cudaFree(send_dev_);
  if (recv_dev_ != nullptr) cudaFree(recv_dev_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status NcclExchange::EnsureCapacity(void** buffer, size_t* capacity, size_t bytes) {
  if (bytes <= *capacity) return absl::OkStatus();
  if (*buffer != nullptr) cudaFree(*buffer);
  *buffer = nullptr;
  const size_t grown = std::max(bytes, *capacity * 2);
  MOE_RETURN_IF_ERROR(CudaStatus(cudaMalloc(buffer, grown), "cudaMalloc"));
  *capacity = grown;
  return absl::OkStatus();
}

absl::Status NcclExchange::AllToAllV(uint64_t, const ExchangeBuffer& send, ExchangeBuffer* recv) {
  MOE_RETURN_IF_ERROR(CheckBlockCount(send, size_));
  MOE_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device_), "cudaSetDevice"));
  // 1. Sizes: one uint64 to and from every peer.
  std::vector<uint64_t> sizes_out(static_cast<size_t>(size_)), sizes_in(static_cast<size_t>(size_));
  for (int i = 0; i < size_; ++i) sizes_out[i] = send.block_size(i);
  const size_t header = sizeof(uint64_t) * static_cast<size_t>(size_);
  MOE_RETURN_IF_ERROR(EnsureCapacity(&send_dev_, &send_capacity_, header));
  MOE_RETURN_IF_ERROR(EnsureCapacity(&recv_dev_, &recv_capacity_, header));
  MOE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(send_dev_, sizes_out.data(), header, cudaMemcpyHostToDevice, stream_), "copy sizes"));
  MOE_RETURN_IF_ERROR(NcclStatus(ncclGroupStart(), "ncclGroupStart"));
  for (int p = 0; p < size_; ++p) {
    ncclSend(static_cast<char*>(send_dev_) + p * sizeof(uint64_t), 1, ncclUint64, p, comm_, stream_);
    ncclRecv(static_cast<char*>(recv_dev_) + p * sizeof(uint64_t), 1, ncclUint64, p, comm_, stream_);
  }
  MOE_RETURN_IF_ERROR(NcclStatus(ncclGroupEnd(), "ncclGroupEnd (sizes)"));
  MOE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(sizes_in.data(), recv_dev_, header, cudaMemcpyDeviceToHost, stream_), "copy sizes back"));
  MOE_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"));

  // 2. Payloads, contiguous on both sides: one copy up, one group of sends and receives, one copy down.
  std::vector<size_t> recv_sizes(sizes_in.begin(), sizes_in.end());
  recv->Layout(recv_sizes);
  MOE_RETURN_IF_ERROR(EnsureCapacity(&send_dev_, &send_capacity_, std::max<size_t>(send.total_bytes(), 1)));
  MOE_RETURN_IF_ERROR(EnsureCapacity(&recv_dev_, &recv_capacity_, std::max<size_t>(recv->total_bytes(), 1)));
  if (send.total_bytes() > 0) {
    MOE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(send_dev_, send.block(0), send.total_bytes(), cudaMemcpyHostToDevice,
                                                   stream_), "copy payloads"));
  }
  MOE_RETURN_IF_ERROR(NcclStatus(ncclGroupStart(), "ncclGroupStart"));
  for (int p = 0; p < size_; ++p) {
    if (sizes_out[p] > 0) ncclSend(static_cast<char*>(send_dev_) + send.offset(p), sizes_out[p], ncclChar, p, comm_, stream_);
    if (sizes_in[p] > 0) ncclRecv(static_cast<char*>(recv_dev_) + recv->offset(p), sizes_in[p], ncclChar, p, comm_, stream_);
  }
  MOE_RETURN_IF_ERROR(NcclStatus(ncclGroupEnd(), "ncclGroupEnd (payloads)"));
  if (recv->total_bytes() > 0) {
    MOE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(recv->block(0), recv_dev_, recv->total_bytes(), cudaMemcpyDeviceToHost,
                                                   stream_), "copy payloads back"));
  }
  return CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
}

}  // namespace moe
