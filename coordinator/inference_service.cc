#include "coordinator/inference_service.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "proto/grpc_util.h"

namespace moe {

absl::StatusOr<GenerationSpec> InferenceService::ToSpec(const v1::GenerateRequest& r) const {
  GenerationSpec spec;
  if (!r.prompt().empty() && r.prompt_token_ids_size() > 0) {
    return absl::InvalidArgumentError("give prompt or prompt_token_ids, not both");
  }
  if (!r.prompt().empty()) {
    if (tokenizer_ == nullptr) return absl::InvalidArgumentError("this model has no tokenizer: send prompt_token_ids");
    MOE_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer_->Encode(r.prompt()));
    const ModelConfig& c = coordinator_->config();
    if (c.bos_token_id >= 0) spec.prompt.push_back(static_cast<int32_t>(c.bos_token_id));
    spec.prompt.insert(spec.prompt.end(), ids.begin(), ids.end());
  } else {
    spec.prompt.assign(r.prompt_token_ids().begin(), r.prompt_token_ids().end());
  }
  if (r.max_tokens() < 0) return absl::InvalidArgumentError("max_tokens must be >= 0");
  spec.max_tokens = r.max_tokens() == 0 ? 16 : r.max_tokens();
  spec.ignore_eos = r.ignore_eos();
  spec.sampling = {r.temperature(), r.top_k(), r.top_p() == 0.0f ? 1.0f : r.top_p(), r.seed()};
  for (const std::string& s : r.stop()) {
    if (s.empty()) return absl::InvalidArgumentError("stop strings must not be empty");
  }
  spec.task = r.task();
  spec.layer_router = r.layer_router();
  if (r.has_skip_threshold()) spec.skip_threshold = r.skip_threshold();
  return spec;
}

grpc::Status InferenceService::Run(grpc::ServerContext* context, const v1::GenerateRequest& request,
                                   const std::function<bool(const v1::GenerateResponse&)>& emit) {
  auto spec = ToSpec(request);
  if (!spec.ok()) return ToGrpcStatus(spec.status());
  const int64_t prompt_tokens = static_cast<int64_t>(spec->prompt.size());
  auto handle = coordinator_->Submit(std::move(*spec));
  if (!handle.ok()) return ToGrpcStatus(handle.status());

  std::vector<int32_t> tokens;
  std::string text;     // decoded text of all tokens
  size_t emitted = 0;   // bytes of `text` already sent
  while (true) {
    RequestHandle::Update u = (*handle)->Wait(std::chrono::milliseconds(100));
    if (context->IsCancelled()) {
      (*handle)->Cancel();
      return grpc::Status(grpc::StatusCode::CANCELLED, "client cancelled");
    }
    if (!u.status.ok()) return ToGrpcStatus(u.status);
    v1::GenerateResponse chunk;
    bool stopped = false;
    for (int32_t t : u.tokens) {
      if (u.reason == v1::FINISH_REASON_EOS && t == u.tokens.back() && u.done) break;  // EOS is not output
      tokens.push_back(t);
      chunk.add_token_ids(t);
    }
    if (tokenizer_ != nullptr && !u.tokens.empty()) {
      text = tokenizer_->Decode(tokens);
      for (const std::string& stop : request.stop()) {
        // Text before `emitted` held no stop string (the stream would have ended), so any match ends here.
        const size_t at = text.find(stop);
        if (at != std::string::npos) {
          text.resize(std::max(at, emitted));
          stopped = true;
        }
      }
      // Hold back a trailing partial UTF-8 sequence (decoded as U+FFFD) until it completes.
      size_t ready = text.size();
      if (!stopped && !u.done && ready >= 3 && text.compare(ready - 3, 3, "\xEF\xBF\xBD") == 0) ready -= 3;
      if (ready > emitted) {
        chunk.set_text(text.substr(emitted, ready - emitted));
        emitted = ready;
      }
    }
    if (stopped) (*handle)->Cancel();
    const bool last = u.done || stopped;
    if (last) {
      chunk.set_finish_reason(stopped ? v1::FINISH_REASON_STOP : u.reason);
      v1::Usage* usage = chunk.mutable_usage();
      usage->set_prompt_tokens(prompt_tokens);
      usage->set_completion_tokens(static_cast<int64_t>(tokens.size()));
      usage->set_all2all_bytes(u.all2all_bytes);
      // Per token the model produced (a final EOS is not streamed but ran every layer of the path).
      if (u.tokens_produced > 0) {
        usage->set_layers_per_token(static_cast<double>(u.layers_executed) / static_cast<double>(u.tokens_produced));
      }
    }
    if ((chunk.token_ids_size() > 0 || !chunk.text().empty() || last) && !emit(chunk)) {
      (*handle)->Cancel();
      return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
    }
    if (last) return grpc::Status::OK;
  }
}

grpc::Status InferenceService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                        grpc::ServerWriter<v1::GenerateResponse>* writer) {
  return Run(context, *request, [writer](const v1::GenerateResponse& r) { return writer->Write(r); });
}

grpc::Status InferenceService::Complete(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                        v1::GenerateResponse* response) {
  return Run(context, *request, [response](const v1::GenerateResponse& r) {
    response->mutable_token_ids()->MergeFrom(r.token_ids());
    response->mutable_text()->append(r.text());
    response->set_finish_reason(r.finish_reason());
    if (r.has_usage()) *response->mutable_usage() = r.usage();
    return true;
  });
}

grpc::Status InferenceService::ModelInfo(grpc::ServerContext*, const v1::ModelInfoRequest*, v1::ModelInfoResponse* r) {
  const ModelConfig& c = coordinator_->config();
  r->set_model_type(c.model_type);
  r->set_vocab_size(c.vocab_size);
  r->set_hidden_size(c.hidden_size);
  r->set_num_layers(c.num_layers);
  r->set_num_experts(c.num_experts);
  r->set_top_k(c.top_k);
  r->set_max_context(c.max_position_embeddings);
  r->set_shard_map_epoch(coordinator_->epoch());
  for (const v1::ExpertMapInfo& m : coordinator_->ListExpertMaps()) r->add_tasks(m.name());
  return grpc::Status::OK;
}

}  // namespace moe
