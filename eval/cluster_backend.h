// CompletionBackend over a running cluster's moe.v1.Inference service (text in, text out).
#ifndef MOE_EVAL_CLUSTER_BACKEND_H_
#define MOE_EVAL_CLUSTER_BACKEND_H_

#include <memory>
#include <string>

#include "eval/task_suite.h"
#include "moe/v1/inference.grpc.pb.h"

namespace moe {

class ClusterBackend : public CompletionBackend {
 public:
  // `task_pattern` ("{task}" replaced by the task being evaluated) is sent with every request as its task
  // expert map's name (empty = full model).
  ClusterBackend(const std::string& address, std::string task_pattern);
  // Names a loaded layer router in every request (empty = none); skip_threshold < 0: its default.
  void SetLayerRouter(std::string name, double skip_threshold) {
    layer_router_ = std::move(name);
    skip_threshold_ = skip_threshold;
  }
  // Sends the prompts concurrently (one call each, greedy); the first failure is returned.
  absl::StatusOr<std::vector<std::string>> CompleteGreedy(const std::vector<std::string>& prompts,
                                                          int64_t max_tokens) override;
  absl::Status BeginTask(const std::string& task) override;
  Traffic TakeTraffic() override;
  int64_t all2all_bytes() const { return all2all_bytes_; }
  int64_t completion_tokens() const { return completion_tokens_; }

 private:
  std::unique_ptr<v1::Inference::Stub> stub_;
  std::string task_pattern_;
  std::string task_;
  std::string layer_router_;
  double skip_threshold_ = -1;
  Traffic since_last_;
  int64_t all2all_bytes_ = 0;
  int64_t completion_tokens_ = 0;
};

}  // namespace moe

#endif  // MOE_EVAL_CLUSTER_BACKEND_H_
