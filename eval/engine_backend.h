// CompletionBackend over the in-process engine.
#ifndef MOE_EVAL_ENGINE_BACKEND_H_
#define MOE_EVAL_ENGINE_BACKEND_H_

#include <memory>

#include "checkpoint/tokenizer.h"
#include "engine/model.h"
#include "eval/task_suite.h"

namespace moe {

class EngineBackend : public CompletionBackend {
 public:
  // `model` and `tokenizer` must outlive the backend.
  EngineBackend(Model* model, const Tokenizer* tokenizer) : model_(model), tokenizer_(tokenizer) {}
  absl::StatusOr<std::vector<std::string>> CompleteGreedy(const std::vector<std::string>& prompts,
                                                          int64_t max_tokens) override;
  std::vector<std::vector<int64_t>> TakeExpertUsage() override;

 private:
  Model* model_;
  const Tokenizer* tokenizer_;
};

}  // namespace moe

#endif  // MOE_EVAL_ENGINE_BACKEND_H_
