#include "coordinator/batching.h"

#include <numeric>

namespace moe {

void BatchAdmission::BeginStep(std::vector<int> running_per_rank) {
  running_per_rank_ = std::move(running_per_rank);
  running_ = std::accumulate(running_per_rank_.begin(), running_per_rank_.end(), 0);
  budget_ = limits_.max_batch_tokens;
}

std::optional<int> BatchAdmission::Admit(int64_t prompt_tokens, int home_rank) {
  const int ranks = static_cast<int>(running_per_rank_.size());
  if (ranks == 0 || running_ >= limits_.max_running || prompt_tokens > budget_) return std::nullopt;
  budget_ -= prompt_tokens;
  int rank = home_rank;
  if (rank < 0 || rank >= ranks) {
    rank = -1;
    for (int k = 1; k <= ranks; ++k) {
      const int r = ((last_assigned_rank_ + k) % ranks + ranks) % ranks;
      if (rank < 0 || running_per_rank_[r] < running_per_rank_[rank]) rank = r;
    }
    last_assigned_rank_ = rank;
  }
  ++running_per_rank_[rank];
  ++running_;
  return rank;
}

}  // namespace moe
