// The synthetic task suite (data/tasks/<task>/<split>.jsonl) and exact-match evaluation over any
// completion backend: the in-process engine now, the cluster through its client later.
#ifndef MOE_EVAL_TASK_SUITE_H_
#define MOE_EVAL_TASK_SUITE_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace moe {

struct TaskExample {
  std::string prompt;
  std::string answer;
};

// task name -> examples, tasks in name order. `limit` > 0 keeps the first `limit` of each task.
// INVALID_ARGUMENT naming file and line for malformed rows; NOT_FOUND when no task has the split.
absl::StatusOr<std::map<std::string, std::vector<TaskExample>>> LoadTaskSuite(const std::string& dir,
                                                                             const std::string& split, int64_t limit);

// Keeps the comma-separated `tasks` of `suite` (empty: all). INVALID_ARGUMENT naming an unknown task.
absl::Status SelectTasks(const std::string& tasks, std::map<std::string, std::vector<TaskExample>>* suite);

// Greedy completions for a batch of prompts; also reports expert usage when it can.
class CompletionBackend {
 public:
  virtual ~CompletionBackend() = default;
  virtual absl::StatusOr<std::vector<std::string>> CompleteGreedy(const std::vector<std::string>& prompts,
                                                                  int64_t max_tokens) = 0;
  // Tokens routed to each expert of each layer since the last call ([layer][expert]); empty if unknown.
  virtual std::vector<std::vector<int64_t>> TakeExpertUsage() { return {}; }
  // Called before each task's prompts; a backend serving task expert maps selects that task's map here.
  virtual absl::Status BeginTask(const std::string& task) { return absl::OkStatus(); }
  // Generated tokens, and the All2All bytes they moved (0 when unknown), since the last call.
  struct Traffic {
    int64_t prompt_tokens = 0;
    int64_t completion_tokens = 0;
    int64_t all2all_bytes = 0;
    int64_t layers_executed = 0;  // decoder layers run by the completion tokens (0 when unknown)
  };
  virtual Traffic TakeTraffic() { return {}; }
};

// Replaces every "{task}" in `pattern` with `task`.
std::string ForTask(const std::string& pattern, const std::string& task);

struct TaskResult {
  std::string task;
  int64_t correct = 0;
  int64_t total = 0;
  double accuracy() const { return total ? static_cast<double>(correct) / total : 0.0; }
  std::vector<std::vector<int64_t>> expert_usage;  // [layer][expert]
  CompletionBackend::Traffic traffic;
  double seconds = 0;  // wall time of the task's completions
};

// Runs every task through `backend` (batches of `batch_size` prompts) and scores exact matches.
absl::StatusOr<std::vector<TaskResult>> EvaluateTasks(CompletionBackend& backend,
                                                      const std::map<std::string, std::vector<TaskExample>>& suite,
                                                      int64_t batch_size, int64_t max_tokens);

nlohmann::json TaskResultsToJson(const std::vector<TaskResult>& results);

}  // namespace moe

#endif  // MOE_EVAL_TASK_SUITE_H_
