#include "eval/cluster_backend.h"

#include <thread>

#include "grpcpp/grpcpp.h"
#include "proto/grpc_util.h"

namespace moe {

ClusterBackend::ClusterBackend(const std::string& address, std::string task_pattern)
    : stub_(v1::Inference::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))),
      task_pattern_(std::move(task_pattern)) {}

absl::Status ClusterBackend::BeginTask(const std::string& task) {
  task_ = ForTask(task_pattern_, task);
  return absl::OkStatus();
}

CompletionBackend::Traffic ClusterBackend::TakeTraffic() {
  Traffic t = since_last_;
  since_last_ = {};
  return t;
}

absl::StatusOr<std::vector<std::string>> ClusterBackend::CompleteGreedy(const std::vector<std::string>& prompts,
                                                                        int64_t max_tokens) {
  std::vector<v1::GenerateResponse> responses(prompts.size());
  std::vector<grpc::Status> status(prompts.size());
  std::vector<std::thread> calls;
  for (size_t i = 0; i < prompts.size(); ++i) {
    calls.emplace_back([&, i] {
      v1::GenerateRequest req;
      req.set_prompt(prompts[i]);
      req.set_max_tokens(static_cast<int32_t>(max_tokens));
      req.set_task(task_);
      req.set_layer_router(layer_router_);
      if (skip_threshold_ >= 0) req.set_skip_threshold(static_cast<float>(skip_threshold_));
      grpc::ClientContext ctx;
      ctx.set_deadline(DeadlineAfter(std::chrono::minutes(5)));
      status[i] = stub_->Complete(&ctx, req, &responses[i]);
    });
  }
  for (auto& t : calls) t.join();
  std::vector<std::string> out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (!status[i].ok()) return FromGrpcStatus(status[i], "cluster");
    all2all_bytes_ += responses[i].usage().all2all_bytes();
    completion_tokens_ += responses[i].usage().completion_tokens();
    since_last_.all2all_bytes += responses[i].usage().all2all_bytes();
    since_last_.completion_tokens += responses[i].usage().completion_tokens();
    since_last_.prompt_tokens += responses[i].usage().prompt_tokens();
    since_last_.layers_executed += static_cast<int64_t>(
        responses[i].usage().layers_per_token() * static_cast<double>(responses[i].usage().completion_tokens()) + 0.5);
    out.push_back(responses[i].text());
  }
  return out;
}

}  // namespace moe
