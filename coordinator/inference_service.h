// moe.v1.Inference over the Coordinator: tokenization, streaming text, stop strings, cancellation.
#ifndef MOE_COORDINATOR_INFERENCE_SERVICE_H_
#define MOE_COORDINATOR_INFERENCE_SERVICE_H_

#include <memory>

#include "checkpoint/tokenizer.h"
#include "coordinator/coordinator.h"
#include "moe/v1/inference.grpc.pb.h"

namespace moe {

class InferenceService final : public v1::Inference::Service {
 public:
  // `tokenizer` may be null (then only prompt_token_ids are accepted and no text is produced).
  InferenceService(Coordinator* coordinator, std::unique_ptr<Tokenizer> tokenizer)
      : coordinator_(coordinator), tokenizer_(std::move(tokenizer)) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Complete(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        v1::GenerateResponse* response) override;
  grpc::Status ModelInfo(grpc::ServerContext*, const v1::ModelInfoRequest*, v1::ModelInfoResponse* response) override;

 private:
  // Runs one request, calling emit(response) for every chunk (the last has finish_reason and usage).
  // emit returns false when the client is gone.
  grpc::Status Run(grpc::ServerContext* context, const v1::GenerateRequest& request,
                   const std::function<bool(const v1::GenerateResponse&)>& emit);
  absl::StatusOr<GenerationSpec> ToSpec(const v1::GenerateRequest& request) const;

  Coordinator* coordinator_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

}  // namespace moe

#endif  // MOE_COORDINATOR_INFERENCE_SERVICE_H_
