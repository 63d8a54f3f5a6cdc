#include "exchange/in_process_exchange.h"

#include <cstring>

#include "common/status.h"

namespace moe {

class InProcessExchangeGroup::MemberImpl : public Exchange {
 public:
  MemberImpl(int rank, std::vector<std::unique_ptr<Mailbox<std::string>>>* boxes, std::chrono::milliseconds timeout)
      : rank_(rank), boxes_(boxes), timeout_(timeout) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(boxes_->size()); }
  absl::Status AllToAllV(uint64_t tag, const ExchangeBuffer& send, ExchangeBuffer* recv) override {
    MOE_RETURN_IF_ERROR(CheckBlockCount(send, size()));
    for (int to = 0; to < size(); ++to) {
      MOE_RETURN_IF_ERROR((*boxes_)[to]->Put(tag, rank_, std::string(send.block(to), send.block_size(to))));
    }
    std::vector<std::string> arrived(static_cast<size_t>(size()));
    for (int from = 0; from < size(); ++from) {
      MOE_ASSIGN_OR_RETURN(arrived[from], (*boxes_)[rank_]->Take(tag, from, timeout_));
    }
    CopyIntoBlocks(arrived, recv);
    return absl::OkStatus();
  }

 private:
  int rank_;
  std::vector<std::unique_ptr<Mailbox<std::string>>>* boxes_;
  std::chrono::milliseconds timeout_;
};

InProcessExchangeGroup::InProcessExchangeGroup(int size, std::chrono::milliseconds timeout) {
  for (int i = 0; i < size; ++i) boxes_.push_back(std::make_unique<Mailbox<std::string>>());
  for (int i = 0; i < size; ++i) members_.push_back(std::make_unique<MemberImpl>(i, &boxes_, timeout));
}

}  // namespace moe
