// Messages that arrived for collectives, keyed by (tag, sender); waits have deadlines.
#ifndef MOE_EXCHANGE_MAILBOX_H_
#define MOE_EXCHANGE_MAILBOX_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace moe {

// `Payload` is what a backend keeps of a message until its collective takes it: bytes (in-process) or
// a reference to the transport's received buffer (gRPC), so that no copy is made on the way in.
template <typename Payload>
class Mailbox {
 public:
  // Stores a message; ALREADY_EXISTS if (tag, from) was already delivered.
  absl::Status Put(uint64_t tag, int from, Payload payload) {
    absl::MutexLock lock(&mutex_);
    auto [it, inserted] = messages_.emplace(std::make_pair(tag, from), std::move(payload));
    if (!inserted) return absl::AlreadyExistsError(absl::StrCat("duplicate message tag ", tag, " from ", from));
    return absl::OkStatus();
  }

  // Removes and returns the message of (tag, from), waiting up to `timeout`.
  absl::StatusOr<Payload> Take(uint64_t tag, int from, std::chrono::milliseconds timeout) {
    const auto key = std::make_pair(tag, from);
    absl::MutexLock lock(&mutex_);
    struct Arrived {
      Mailbox* box;
      std::pair<uint64_t, int> key;
      bool Ready() const ABSL_NO_THREAD_SAFETY_ANALYSIS { return !box->aborted_.ok() || box->messages_.count(key) > 0; }
    } arrived{this, key};
    if (!mutex_.AwaitWithTimeout(absl::Condition(&arrived, &Arrived::Ready), absl::FromChrono(timeout))) {
      return absl::DeadlineExceededError(absl::StrCat("no message with tag ", tag, " from member ", from, " within ",
                                                      timeout.count(), " ms"));
    }
    if (!aborted_.ok()) return aborted_;
    auto it = messages_.find(key);
    Payload payload = std::move(it->second);
    messages_.erase(it);
    return payload;
  }

  // Removes and returns every stored message (so that what they hold can be released).
  std::vector<Payload> Drain() {
    absl::MutexLock lock(&mutex_);
    std::vector<Payload> all;
    for (auto& [key, payload] : messages_) all.push_back(std::move(payload));
    messages_.clear();
    return all;
  }

  // Wakes every waiting and future Take with `status` (not OK): the group this mailbox serves is gone
  // (a new shard map superseded it). Idempotent; the first status wins.
  void Abort(absl::Status status) {
    absl::MutexLock lock(&mutex_);
    if (aborted_.ok()) aborted_ = std::move(status);
  }

 private:
  absl::Mutex mutex_;
  absl::Status aborted_ ABSL_GUARDED_BY(mutex_);
  std::map<std::pair<uint64_t, int>, Payload> messages_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace moe

#endif  // MOE_EXCHANGE_MAILBOX_H_
