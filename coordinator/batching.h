// The continuous-batching admission policy: which queued requests join the running batch at the start
// of an engine step, and on which worker rank each one runs. A pure policy, so that the live
// coordinator and the simulator (driving it with its own clock) run the same code.
#ifndef MOE_COORDINATOR_BATCHING_H_
#define MOE_COORDINATOR_BATCHING_H_

#include <cstdint>
#include <optional>
#include <vector>

namespace moe {

struct BatchLimits {
  int max_running = 64;             // sequences in the running batch
  int64_t max_batch_tokens = 4096;  // prompt tokens admitted per step
};

// Admission is FIFO: requests are offered in queue order and the first one that does not fit ends the
// step's admission (no reordering, so no request starves). A request fits while the running batch has a
// free slot and its prompt fits in what is left of the step's prompt-token budget. A request with a home
// rank (its task expert map lives there) runs there; any other goes to the rank with the fewest running
// sequences, ties broken round-robin from the rank assigned last, so that light traffic still reaches
// every worker.
class BatchAdmission {
 public:
  explicit BatchAdmission(const BatchLimits& limits) : limits_(limits) {}

  // Starts one step's admission. `running_per_rank[r]` is the number of sequences running on rank r;
  // its size is the number of ranks (0: nothing can be admitted).
  void BeginStep(std::vector<int> running_per_rank);
  // Offers the next queued request. Returns the rank it runs on (and counts it as running there), or
  // nullopt when it does not fit: the caller stops offering for this step. `home_rank` < 0 or out of
  // range: no home.
  std::optional<int> Admit(int64_t prompt_tokens, int home_rank);

 private:
  BatchLimits limits_;
  std::vector<int> running_per_rank_;
  int running_ = 0;
  int64_t budget_ = 0;
  int last_assigned_rank_ = -1;  // persists across steps
};

}  // namespace moe

#endif  // MOE_COORDINATOR_BATCHING_H_
