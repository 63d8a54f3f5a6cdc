#include "exchange/mailbox.h"

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace moe {

absl::Status Mailbox::Put(uint64_t tag, int from, std::string payload) {
  absl::MutexLock lock(&mutex_);
  auto [it, inserted] = messages_.emplace(std::make_pair(tag, from), std::move(payload));
  if (!inserted) return absl::AlreadyExistsError(absl::StrCat("duplicate message tag ", tag, " from ", from));
  return absl::OkStatus();
}

absl::StatusOr<std::string> Mailbox::Take(uint64_t tag, int from, std::chrono::milliseconds timeout) {
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
  std::string payload = std::move(it->second);
  messages_.erase(it);
  return payload;
}

void Mailbox::Abort(absl::Status status) {
  absl::MutexLock lock(&mutex_);
  if (aborted_.ok()) aborted_ = std::move(status);
}

void Mailbox::Clear() {
  absl::MutexLock lock(&mutex_);
  messages_.clear();
}

}  // namespace moe
