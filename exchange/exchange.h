// All-to-all-v of byte buffers among the members of a group, plus a barrier: the data plane of expert
// parallelism. Backends: in-process (threads), gRPC (default, across hosts), MPI and NCCL.
#ifndef MOE_EXCHANGE_EXCHANGE_H_
#define MOE_EXCHANGE_EXCHANGE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "exchange/exchange_buffer.h"

namespace moe {

class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Sends block i of `send` to member i (block rank() is delivered locally) and lays out `recv` so
  // that its block i is what member i sent to this one. Every member must call it with the same `tag`,
  // in the same order, even with empty blocks: a member that skips a collective stalls the others
  // until their deadline. `send` must stay unchanged until the call returns.
  // REQUIRES: send.members() == size(); recv != &send. Errors: INVALID_ARGUMENT for a wrong block
  // count, DEADLINE_EXCEEDED if a peer's message does not arrive in time, UNAVAILABLE if a peer cannot
  // be reached. Not reentrant: one collective at a time per member.
  virtual absl::Status AllToAllV(uint64_t tag, const ExchangeBuffer& send, ExchangeBuffer* recv) = 0;

  // The same collective over one string per member: a convenience for tests, tools and control
  // messages; it copies into and out of contiguous buffers. The serving hot path uses AllToAllV.
  absl::StatusOr<std::vector<std::string>> AllToAll(uint64_t tag, const std::vector<std::string>& send);

  // Returns once every member has entered Barrier(tag) (or with the AllToAllV errors).
  absl::Status Barrier(uint64_t tag);
};

// The one check of a send buffer's shape, shared by the backends.
absl::Status CheckBlockCount(const ExchangeBuffer& send, int members);

// Lays out `out` with one block per string and copies them in.
void CopyIntoBlocks(const std::vector<std::string>& blocks, ExchangeBuffer* out);

}  // namespace moe

#endif  // MOE_EXCHANGE_EXCHANGE_H_
