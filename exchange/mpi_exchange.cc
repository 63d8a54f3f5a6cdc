#include "exchange/mpi_exchange.h"

#include <climits>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moe {

absl::Status MpiStatus(int code, const char* what) {
  if (code == MPI_SUCCESS) return absl::OkStatus();
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return absl::InternalError(absl::StrCat(what, ": ", std::string(text, static_cast<size_t>(len))));
}

MpiExchange::MpiExchange(MPI_Comm comm) : comm_(comm) {
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

absl::StatusOr<std::vector<std::string>> MpiExchange::AllToAll(uint64_t tag, std::vector<std::string> send) {
  if (static_cast<int>(send.size()) != size_) return absl::InvalidArgumentError("AllToAll: one buffer per member");
  struct Header {
    uint64_t bytes;
    uint64_t tag;
  };
  std::vector<Header> out(static_cast<size_t>(size_)), in(static_cast<size_t>(size_));
  for (int i = 0; i < size_; ++i) out[i] = {send[i].size(), tag};
  MOE_RETURN_IF_ERROR(MpiStatus(MPI_Alltoall(out.data(), 2, MPI_UINT64_T, in.data(), 2, MPI_UINT64_T, comm_),
                                "MPI_Alltoall (sizes)"));
  std::vector<int> send_counts(static_cast<size_t>(size_)), send_displs(send_counts.size()),
      recv_counts(send_counts.size()), recv_displs(send_counts.size());
  uint64_t send_total = 0, recv_total = 0;
  for (int i = 0; i < size_; ++i) {
    if (in[i].tag != tag) {
      return absl::FailedPreconditionError(absl::StrCat("collective mismatch: rank ", i, " is at tag ", in[i].tag,
                                                        ", this rank at ", tag));
    }
    send_displs[i] = static_cast<int>(send_total);
    recv_displs[i] = static_cast<int>(recv_total);
    send_counts[i] = static_cast<int>(out[i].bytes);
    recv_counts[i] = static_cast<int>(in[i].bytes);
    send_total += out[i].bytes;
    recv_total += in[i].bytes;
  }
  if (send_total > INT_MAX || recv_total > INT_MAX) {
    return absl::InvalidArgumentError("AllToAll: more than 2 GiB in one collective");
  }
  if (send_buf_.size() < send_total) send_buf_.resize(send_total);
  if (recv_buf_.size() < recv_total) recv_buf_.resize(recv_total);
  for (int i = 0; i < size_; ++i) std::memcpy(send_buf_.data() + send_displs[i], send[i].data(), send[i].size());
  MOE_RETURN_IF_ERROR(MpiStatus(MPI_Alltoallv(send_buf_.data(), send_counts.data(), send_displs.data(), MPI_BYTE,
                                              recv_buf_.data(), recv_counts.data(), recv_displs.data(), MPI_BYTE, comm_),
                                "MPI_Alltoallv"));
  std::vector<std::string> recv(static_cast<size_t>(size_));
  for (int i = 0; i < size_; ++i) recv[i].assign(recv_buf_.data() + recv_displs[i], static_cast<size_t>(recv_counts[i]));
  return recv;
}

}  // namespace moe
