#include "eval/task_suite.h"

#include <chrono>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"

namespace moe {

absl::StatusOr<std::map<std::string, std::vector<TaskExample>>> LoadTaskSuite(const std::string& dir,
                                                                             const std::string& split, int64_t limit) {
  namespace fs = std::filesystem;
  std::map<std::string, std::vector<TaskExample>> suite;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return absl::NotFoundError(absl::StrCat(dir, ": not a directory"));
  for (const auto& entry : fs::directory_iterator(dir)) {
    const fs::path file = entry.path() / (split + ".jsonl");
    if (!entry.is_directory() || !fs::exists(file)) continue;
    std::ifstream in(file);
    std::string line;
    int64_t line_no = 0;
    auto& rows = suite[entry.path().filename().string()];
    while (std::getline(in, line) && (limit <= 0 || static_cast<int64_t>(rows.size()) < limit)) {
      ++line_no;
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("prompt") || !j["prompt"].is_string() ||
          !j.contains("answer") || !j["answer"].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(file.string(), ":", line_no,
                                                       ": expected {\"prompt\": string, \"answer\": string}"));
      }
      rows.push_back({j["prompt"].get<std::string>(), j["answer"].get<std::string>()});
    }
  }
  if (suite.empty()) return absl::NotFoundError(absl::StrCat(dir, ": no task has a ", split, ".jsonl"));
  return suite;
}

absl::Status SelectTasks(const std::string& tasks, std::map<std::string, std::vector<TaskExample>>* suite) {
  if (tasks.empty()) return absl::OkStatus();
  const std::vector<std::string> wanted = absl::StrSplit(tasks, ',', absl::SkipEmpty());
  for (const std::string& t : wanted) {
    if (!suite->count(t)) return absl::InvalidArgumentError(absl::StrCat("no task '", t, "' in the suite"));
  }
  std::erase_if(*suite, [&](const auto& entry) { return std::find(wanted.begin(), wanted.end(), entry.first) == wanted.end(); });
  return absl::OkStatus();
}

std::string ForTask(const std::string& pattern, const std::string& task) {
  std::string out = pattern;
  for (size_t at = out.find("{task}"); at != std::string::npos; at = out.find("{task}", at + task.size())) {
    out.replace(at, 6, task);
  }
  return out;
}

absl::StatusOr<std::vector<TaskResult>> EvaluateTasks(CompletionBackend& backend,
                                                      const std::map<std::string, std::vector<TaskExample>>& suite,
                                                      int64_t batch_size, int64_t max_tokens) {
  std::vector<TaskResult> results;
  for (const auto& [task, rows] : suite) {
    TaskResult r;
    r.task = task;
    MOE_RETURN_IF_ERROR(backend.BeginTask(task));
    backend.TakeExpertUsage();  // start this task's usage and traffic from zero
    backend.TakeTraffic();
    const auto start = std::chrono::steady_clock::now();
    for (size_t begin = 0; begin < rows.size(); begin += static_cast<size_t>(batch_size)) {
      const size_t end = std::min(rows.size(), begin + static_cast<size_t>(batch_size));
      std::vector<std::string> prompts;
      for (size_t i = begin; i < end; ++i) prompts.push_back(rows[i].prompt);
      MOE_ASSIGN_OR_RETURN(std::vector<std::string> outputs, backend.CompleteGreedy(prompts, max_tokens));
      for (size_t i = begin; i < end; ++i) r.correct += outputs[i - begin] == rows[i].answer;
      r.total += static_cast<int64_t>(end - begin);
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    r.expert_usage = backend.TakeExpertUsage();
    r.traffic = backend.TakeTraffic();
    results.push_back(std::move(r));
  }
  return results;
}

nlohmann::json TaskResultsToJson(const std::vector<TaskResult>& results) {
  nlohmann::json tasks = nlohmann::json::object();
  for (const TaskResult& r : results) {
    tasks[r.task] = {{"accuracy", r.accuracy()}, {"correct", r.correct}, {"n", r.total},
                     {"expert_usage", r.expert_usage}, {"seconds", r.seconds},
                     {"completion_tokens", r.traffic.completion_tokens}, {"all2all_bytes", r.traffic.all2all_bytes},
                     {"layers_executed", r.traffic.layers_executed}};
  }
  return {{"tasks", tasks}};
}

}  // namespace moe
