// CompletionBackend over the in-process engine.
#ifndef MOE_EVAL_ENGINE_BACKEND_H_
#define MOE_EVAL_ENGINE_BACKEND_H_

#include <memory>
#include <optional>

#include "checkpoint/tokenizer.h"
#include "engine/model.h"
#include "eval/task_suite.h"
#include "router/layer_router.h"

namespace moe {

class EngineBackend : public CompletionBackend {
 public:
  // `model` and `tokenizer` must outlive the backend. With `expert_map_pattern` (a directory, "{task}"
  // replaced by the task's name), each task is served through its expert map, installed into the model.
  EngineBackend(Model* model, const Tokenizer* tokenizer, std::string expert_map_pattern = "")
      : model_(model), tokenizer_(tokenizer), expert_map_pattern_(std::move(expert_map_pattern)) {}
  // Decides every request's layer path with `router` (validated for this model; must outlive the
  // backend); skip_threshold < 0 uses the router's default.
  void SetLayerRouter(const LayerRouter* router, double skip_threshold);
  absl::StatusOr<std::vector<std::string>> CompleteGreedy(const std::vector<std::string>& prompts,
                                                          int64_t max_tokens) override;
  std::vector<std::vector<int64_t>> TakeExpertUsage() override;
  absl::Status BeginTask(const std::string& task) override;
  Traffic TakeTraffic() override;

 private:
  Model* model_;
  const Tokenizer* tokenizer_;
  std::string expert_map_pattern_;
  std::optional<SlotRouting> slot_routing_;
  std::unique_ptr<LayerRoutingPolicy> layer_policy_;
  int64_t completion_tokens_ = 0, prompt_tokens_ = 0, layers_executed_ = 0;
};

}  // namespace moe

#endif  // MOE_EVAL_ENGINE_BACKEND_H_
