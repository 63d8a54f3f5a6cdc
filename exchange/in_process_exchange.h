// Exchange among threads of one process: the fake for unit tests of code above the seam, and the
// reference the other backends' test suite is checked against.
#ifndef MOE_EXCHANGE_IN_PROCESS_EXCHANGE_H_
#define MOE_EXCHANGE_IN_PROCESS_EXCHANGE_H_

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "exchange/exchange.h"
#include "exchange/mailbox.h"

namespace moe {

// Owns the mailboxes of `size` members; Member(i) is used by member i's thread.
class InProcessExchangeGroup {
 public:
  explicit InProcessExchangeGroup(int size, std::chrono::milliseconds timeout = std::chrono::seconds(10));
  Exchange* Member(int rank) { return members_[rank].get(); }

 private:
  class MemberImpl;
  std::vector<std::unique_ptr<Mailbox<std::string>>> boxes_;
  std::vector<std::unique_ptr<Exchange>> members_;
};

}  // namespace moe

#endif  // MOE_EXCHANGE_IN_PROCESS_EXCHANGE_H_
