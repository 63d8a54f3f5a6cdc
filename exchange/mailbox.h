// Messages that arrived for collectives, keyed by (tag, sender); waits have deadlines.
#ifndef MOE_EXCHANGE_MAILBOX_H_
#define MOE_EXCHANGE_MAILBOX_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace moe {

class Mailbox {
 public:
  // Stores a message; ALREADY_EXISTS if (tag, from) was already delivered.
  absl::Status Put(uint64_t tag, int from, std::string payload);
  // Removes and returns the message of (tag, from), waiting up to `timeout`.
  absl::StatusOr<std::string> Take(uint64_t tag, int from, std::chrono::milliseconds timeout);
  // Drops every message (membership change).
  void Clear();
  // Wakes every waiting and future Take with `status` (not OK): the group this mailbox serves is gone
  // (a new shard map superseded it). Idempotent; the first status wins.
  void Abort(absl::Status status);

 private:
  absl::Mutex mutex_;
  absl::Status aborted_ ABSL_GUARDED_BY(mutex_);
  std::map<std::pair<uint64_t, int>, std::string> messages_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace moe

#endif  // MOE_EXCHANGE_MAILBOX_H_
