// All-to-all-v of byte buffers among the members of a group, plus a barrier: the data plane of expert
// parallelism. Backends: in-process (threads), gRPC (default, across hosts), MPI and NCCL (next issue).
#ifndef MOE_EXCHANGE_EXCHANGE_H_
#define MOE_EXCHANGE_EXCHANGE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moe {

class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Sends send[i] to member i (send[rank()] is delivered locally) and returns recv[i] = what member i
  // sent to this one. Every member must call it with the same `tag`, in the same order, even with
  // empty buffers: a member that skips a collective stalls the others until their deadline.
  // REQUIRES: send.size() == size(). Errors: DEADLINE_EXCEEDED if a peer's message does not arrive in
  // time, UNAVAILABLE if a peer cannot be reached. Not reentrant: one collective at a time per member.
  virtual absl::StatusOr<std::vector<std::string>> AllToAll(uint64_t tag, std::vector<std::string> send) = 0;

  // Returns once every member has entered Barrier(tag) (or with the AllToAll errors).
  absl::Status Barrier(uint64_t tag) {
    auto r = AllToAll(tag, std::vector<std::string>(static_cast<size_t>(size())));
    return r.status();
  }
};

}  // namespace moe

#endif  // MOE_EXCHANGE_EXCHANGE_H_
