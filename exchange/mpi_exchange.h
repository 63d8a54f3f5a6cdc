// Exchange over MPI (MPI_Alltoallv), for clusters started by mpirun or srun.
#ifndef MOE_EXCHANGE_MPI_EXCHANGE_H_
#define MOE_EXCHANGE_MPI_EXCHANGE_H_

#include <mpi.h>

#include <vector>

#include "exchange/exchange.h"

namespace moe {

// REQUIRES: MPI is initialized and outlives this object; one collective at a time per rank (no
// MPI_THREAD_MULTIPLE needed). MPI collectives have no deadlines: a rank that never enters blocks the
// others (Open MPI aborts the job when a rank dies). Each AllToAll first exchanges (size, tag) headers
// so that ranks entering different collectives fail with FAILED_PRECONDITION instead of mixing data.
class MpiExchange : public Exchange {
 public:
  explicit MpiExchange(MPI_Comm comm);
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::StatusOr<std::vector<std::string>> AllToAll(uint64_t tag, std::vector<std::string> send) override;

 private:
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  // Staging buffers, kept across collectives: fresh multi-megabyte buffers each time cost page faults
  // and defeat MPI's registration caches.
  std::vector<char> send_buf_, recv_buf_;
};

// The one place MPI return codes become absl::Status (INTERNAL with MPI's error string).
absl::Status MpiStatus(int code, const char* what);

}  // namespace moe

#endif  // MOE_EXCHANGE_MPI_EXCHANGE_H_
