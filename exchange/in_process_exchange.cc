#include "exchange/in_process_exchange.h"

#include "common/status.h"

namespace moe {

class InProcessExchangeGroup::MemberImpl : public Exchange {
 public:
  MemberImpl(int rank, std::vector<std::unique_ptr<Mailbox>>* boxes, std::chrono::milliseconds timeout)
      : rank_(rank), boxes_(boxes), timeout_(timeout) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(boxes_->size()); }
  absl::StatusOr<std::vector<std::string>> AllToAll(uint64_t tag, std::vector<std::string> send) override {
    if (static_cast<int>(send.size()) != size()) return absl::InvalidArgumentError("AllToAll: one buffer per member");
    for (int to = 0; to < size(); ++to) MOE_RETURN_IF_ERROR((*boxes_)[to]->Put(tag, rank_, std::move(send[to])));
    std::vector<std::string> recv(static_cast<size_t>(size()));
    for (int from = 0; from < size(); ++from) {
      MOE_ASSIGN_OR_RETURN(recv[from], (*boxes_)[rank_]->Take(tag, from, timeout_));
    }
    return recv;
  }

 private:
  int rank_;
  std::vector<std::unique_ptr<Mailbox>>* boxes_;
  std::chrono::milliseconds timeout_;
};

InProcessExchangeGroup::InProcessExchangeGroup(int size, std::chrono::milliseconds timeout) {
  for (int i = 0; i < size; ++i) boxes_.push_back(std::make_unique<Mailbox>());
  for (int i = 0; i < size; ++i) members_.push_back(std::make_unique<MemberImpl>(i, &boxes_, timeout));
}

}  // namespace moe
