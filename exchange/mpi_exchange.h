// Exchange over MPI (MPI_Alltoallv), for clusters started by mpirun or srun.
#ifndef MOE_EXCHANGE_MPI_EXCHANGE_H_
#define MOE_EXCHANGE_MPI_EXCHANGE_H_

#include <mpi.h>

#include <vector>

#include "exchange/exchange.h"

namespace moe {

// REQUIRES: MPI is initialized and outlives this object; `comm` carries no other point-to-point
// traffic; one collective at a time per rank (no MPI_THREAD_MULTIPLE needed). MPI has no deadlines: a
// rank that never enters blocks the others (Open MPI aborts the job when a rank dies).
//
// One message per peer, straight from the caller's send buffer into the caller's receive buffer (no
// staging copies): each rank posts its sends, learns every incoming size by a matched probe
// (MPI_Mprobe), lays out the receive buffer and receives in place. The collective's tag travels as the
// MPI tag, so ranks entering different collectives fail with FAILED_PRECONDITION instead of mixing data.
class MpiExchange : public Exchange {
 public:
  explicit MpiExchange(MPI_Comm comm);
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::Status AllToAllV(uint64_t tag, const ExchangeBuffer& send, ExchangeBuffer* recv) override;

 private:
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  int tag_space_ = 32768;  // MPI_TAG_UB + 1; the standard guarantees at least 32768
  // Per-collective bookkeeping, kept to spare allocations.
  std::vector<MPI_Request> requests_;
  std::vector<MPI_Message> messages_;
  std::vector<size_t> recv_sizes_;
};

// The one place MPI return codes become absl::Status (INTERNAL with MPI's error string).
absl::Status MpiStatus(int code, const char* what);

}  // namespace moe

#endif  // MOE_EXCHANGE_MPI_EXCHANGE_H_
