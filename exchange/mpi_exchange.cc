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
  int* tag_ub = nullptr;
  int found = 0;
  MPI_Comm_get_attr(comm_, MPI_TAG_UB, &tag_ub, &found);
  if (found != 0 && tag_ub != nullptr && *tag_ub > 0) tag_space_ = *tag_ub == INT_MAX ? INT_MAX : *tag_ub + 1;
}

absl::Status MpiExchange::AllToAllV(uint64_t tag, const ExchangeBuffer& send, ExchangeBuffer* recv) {
  MOE_RETURN_IF_ERROR(CheckBlockCount(send, size_));
  for (int p = 0; p < size_; ++p) {
    if (send.block_size(p) > INT_MAX) return absl::InvalidArgumentError("AllToAll: more than 2 GiB for one peer");
  }
  const int mpi_tag = static_cast<int>(tag % static_cast<uint64_t>(tag_space_));
  requests_.clear();
  // 1. Post every send (peers in ring order from this rank, so that no peer is everyone's first).
  for (int i = 1; i < size_; ++i) {
    const int to = (rank_ + i) % size_;
    requests_.emplace_back();
    MOE_RETURN_IF_ERROR(MpiStatus(MPI_Isend(send.block(to), static_cast<int>(send.block_size(to)), MPI_BYTE, to, mpi_tag,
                                            comm_, &requests_.back()),
                                  "MPI_Isend"));
  }
  // 2. Learn every incoming size from the matched message's envelope.
  messages_.assign(static_cast<size_t>(size_), MPI_MESSAGE_NULL);
  recv_sizes_.assign(static_cast<size_t>(size_), 0);
  recv_sizes_[rank_] = send.block_size(rank_);
  absl::Status mismatch;
  for (int i = 1; i < size_; ++i) {
    const int from = (rank_ - i + size_) % size_;
    MPI_Status st;
    MOE_RETURN_IF_ERROR(MpiStatus(MPI_Mprobe(from, MPI_ANY_TAG, comm_, &messages_[from], &st), "MPI_Mprobe"));
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    recv_sizes_[from] = static_cast<size_t>(count);
    if (st.MPI_TAG != mpi_tag && mismatch.ok()) {
      mismatch = absl::FailedPreconditionError(absl::StrCat("collective mismatch: rank ", from, " is at tag ", st.MPI_TAG,
                                                            " (mod ", tag_space_, "), this rank at ", mpi_tag));
    }
  }
  // 3. Receive in place (a mismatched message is still received, so that its sender is not left waiting).
  recv->Layout(recv_sizes_);
  if (recv_sizes_[rank_] > 0) std::memcpy(recv->block(rank_), send.block(rank_), recv_sizes_[rank_]);
  for (int i = 1; i < size_; ++i) {
    const int from = (rank_ - i + size_) % size_;
    requests_.emplace_back();
    MOE_RETURN_IF_ERROR(MpiStatus(MPI_Imrecv(recv->block(from), static_cast<int>(recv_sizes_[from]), MPI_BYTE,
                                             &messages_[from], &requests_.back()),
                                  "MPI_Imrecv"));
  }
  MOE_RETURN_IF_ERROR(MpiStatus(MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE),
                                "MPI_Waitall"));
  return mismatch;
}

}  // namespace moe
