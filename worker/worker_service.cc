#include "worker/worker_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "proto/grpc_util.h"

namespace moe {

absl::StatusOr<ShardMap> ShardMapFromProto(const v1::ShardMapProto& p, const ModelConfig& c,
                                           const std::vector<int64_t>& merged_experts) {
  ShardMap m;
  m.epoch = p.epoch();
  m.num_workers = p.num_workers();
  if (m.num_workers < 1 || p.worker_addresses_size() != m.num_workers) {
    return absl::InvalidArgumentError("shard map: num_workers must be >= 1 with one address per worker");
  }
  if (p.layers_size() != c.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("shard map has ", p.layers_size(), " layers, the model ", c.num_layers));
  }
  m.worker_addresses.assign(p.worker_addresses().begin(), p.worker_addresses().end());
  m.owners.resize(static_cast<size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const auto& layer = p.layers(static_cast<int>(l));
    const int64_t expected =
        c.IsMoeLayer(l) ? c.num_experts + (merged_experts.empty() ? 0 : merged_experts[l]) : 0;
    if (layer.experts_size() != expected) {
      return absl::InvalidArgumentError(absl::StrCat("shard map layer ", l, " places ", layer.experts_size(),
                                                     " experts, the model has ", expected));
    }
    for (const auto& e : layer.experts()) {
      if (e.workers_size() == 0) return absl::InvalidArgumentError(absl::StrCat("shard map layer ", l, ": an expert has no owner"));
      std::vector<int> owners;
      for (int w : e.workers()) {
        if (w < 0 || w >= m.num_workers) return absl::InvalidArgumentError(absl::StrCat("shard map layer ", l, ": owner ", w, " out of range"));
        owners.push_back(w);
      }
      m.owners[l].push_back(std::move(owners));
    }
  }
  m.stages = ShardMap::SingleStage(c.num_layers, m.num_workers);
  return m;
}

void ShardMapToProto(const ShardMap& m, v1::ShardMapProto* p) {
  p->set_epoch(m.epoch);
  p->set_num_workers(m.num_workers);
  for (const std::string& a : m.worker_addresses) p->add_worker_addresses(a);
  for (const auto& layer : m.owners) {
    auto* lp = p->add_layers();
    for (const auto& owners : layer) {
      auto* e = lp->add_experts();
      for (int w : owners) e->add_workers(w);
    }
  }
}

namespace {

// An artifact a LoadShardRequest names (expert map, layer router), as read from `path`: it must read,
// carry `name`, and pass `validate`. Anything else is FAILED_PRECONDITION: the coordinator checked it
// already, so the file changed or the worker serves another model.
template <typename Artifact, typename Validate>
absl::StatusOr<Artifact> CheckedArtifact(const std::string& name, const std::string& path, const char* kind,
                                         absl::StatusOr<Artifact> read, const Validate& validate) {
  if (!read.ok()) return absl::FailedPreconditionError(read.status().message());
  if (read->name != name) {
    return absl::FailedPreconditionError(absl::StrCat(kind, " at ", path, " is named '", read->name, "', not '", name, "'"));
  }
  if (absl::Status s = validate(*read); !s.ok()) return absl::FailedPreconditionError(s.message());
  return read;
}

}  // namespace

WorkerService::WorkerService(Options options) : options_(std::move(options)), pool_(std::make_unique<ThreadPool>(options_.threads)) {}

grpc::Status WorkerService::LoadShard(grpc::ServerContext*, const v1::LoadShardRequest* request,
                                      v1::LoadShardResponse* response) {
  {
    // A Step of the old map may be blocked in a collective waiting for a dead peer: end it now, so
    // that step_mutex_ comes free (the coordinator has already given up on that step).
    absl::MutexLock exchange_lock(&exchange_mutex_);
    if (exchange_ != nullptr && exchange_->epoch() < request->shard_map().epoch()) {
      exchange_->Abort(absl::AbortedError(absl::StrCat("superseded by shard map epoch ", request->shard_map().epoch())));
    }
  }
  absl::MutexLock lock(&step_mutex_);
  if (source_ == nullptr) {
    auto source = ModelSource::Open(options_.model_dir);
    if (!source.ok()) return ToGrpcStatus(source.status());
    source_ = std::move(*source);
  }
  if (!identity_) {
    auto identity = IdentifyModel(*source_);
    if (!identity.ok()) return ToGrpcStatus(identity.status());
    identity_ = *identity;
  }
  const ModelConfig& config = source_->config();
  // Task expert maps first: their merged experts are part of what the shard map places.
  std::vector<ExpertMap> maps;
  std::vector<int64_t> merged_experts(static_cast<size_t>(config.num_layers), 0);
  for (const v1::ExpertMapRef& ref : request->expert_maps()) {
    auto map = CheckedArtifact(ref.name(), ref.path(), "expert map", ReadExpertMap(ref.path(), /*with_weights=*/true),
                               [&](const ExpertMap& m) { return ValidateExpertMap(m, *identity_, config.top_k); });
    if (!map.ok()) return ToGrpcStatus(map.status());
    for (const LayerExpertMap& lm : map->layers) merged_experts[lm.layer] += static_cast<int64_t>(lm.merged.size());
    maps.push_back(std::move(*map));
  }
  std::map<std::string, LayerRouter> layer_routers;
  for (const v1::LayerRouterRef& ref : request->layer_routers()) {
    auto router = CheckedArtifact(ref.name(), ref.path(), "layer router", ReadLayerRouter(ref.path()),
                                  [&](const LayerRouter& r) { return ValidateLayerRouter(r, *identity_); });
    if (!router.ok()) return ToGrpcStatus(router.status());
    layer_routers[ref.name()] = std::move(*router);
  }
  auto map = ShardMapFromProto(request->shard_map(), config, merged_experts);
  if (!map.ok()) return ToGrpcStatus(map.status());
  const int me = request->worker_id();
  if (me < 0 || me >= map->num_workers) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "worker_id out of range");

  auto shard = std::make_unique<Shard>();
  shard->worker_id = me;
  shard->layer_routers = std::move(layer_routers);
  shard->map = std::move(*map);
  LoadOptions load;
  const ShardMap* m = &shard->map;
  load.owns_expert = [m, me](int64_t layer, int64_t expert) { return m->Owns(me, layer, expert); };
  auto weights = LoadModelWeights(source_, load, pool_.get());
  if (!weights.ok()) return ToGrpcStatus(weights.status());
  const auto base_ids = MergedExpertBaseIds(maps, config);
  for (size_t i = 0; i < maps.size(); ++i) {
    InstallMergedExperts(maps[i], base_ids[i], weights->get(), load.owns_expert);
    shard->expert_maps[maps[i].name] = ResolveSlotRouting(maps[i], base_ids[i], config);
  }
  size_t expert_bytes = 0;  // the checkpoint's experts and task maps' merged experts held here
  for (const LayerWeights& l : (*weights)->layers) {
    for (const FfnWeights& e : l.moe.experts) expert_bytes += e.size_bytes();
  }
  std::shared_ptr<GrpcExchange> grpc_exchange;
  if (options_.make_exchange) {
    auto exchange = options_.make_exchange(me, shard->map, request->communicator_id());
    if (!exchange.ok()) return ToGrpcStatus(exchange.status());
    shard->exchange = std::move(*exchange);
  } else {
    grpc_exchange = std::make_shared<GrpcExchange>(me, shard->map.epoch, shard->map.worker_addresses, options_.exchange_timeout);
    shard->exchange = grpc_exchange;
  }
  shard->dispatcher = std::make_unique<DistributedExpertDispatcher>(weights->get(), &shard->map, shard->exchange.get(),
                                                                    pool_.get());
  shard->model = std::make_unique<Model>(std::move(*weights), pool_.get(), shard->dispatcher.get());
  // A new map invalidates every sequence: the coordinator re-prefills the ones it resumes.
  sequences_.clear();
  {
    absl::MutexLock exchange_lock(&exchange_mutex_);
    exchange_ = grpc_exchange;
  }
  std::swap(shard_, shard);
  response->set_expert_bytes(static_cast<int64_t>(expert_bytes));
  // The old shard (and its exchange) is destroyed here, after the new one is visible.
  return grpc::Status::OK;
}

grpc::Status WorkerService::Step(grpc::ServerContext*, const v1::StepRequest* request, v1::StepResponse* response) {
  absl::MutexLock lock(&step_mutex_);
  if (shard_ == nullptr) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "no shard loaded");
  if (request->epoch() != shard_->map.epoch) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("step of epoch ", request->epoch(), " refused: worker is at epoch ", shard_->map.epoch));
  }
  for (uint64_t id : request->release()) sequences_.erase(id);
  Model& model = *shard_->model;
  const int64_t vocab = model.config().vocab_size;

  std::vector<ForwardInput> inputs;
  std::vector<std::vector<int32_t>> tokens;
  tokens.reserve(static_cast<size_t>(request->work_size()));
  for (const v1::SequenceWork& w : request->work()) {
    if (w.start()) {
      SamplingParams params{w.temperature(), w.top_k(), w.top_p() == 0.0f ? 1.0f : w.top_p(), w.seed()};
      if (absl::Status s = params.Validate(); !s.ok()) return ToGrpcStatus(s);
      if (w.sampled_before() < 0 || w.sampled_before() >= w.tokens_size()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            absl::StrCat("sequence ", w.sequence_id(), ": sampled_before ", w.sampled_before(),
                                         " must be in [0, tokens)"));
      }
      const SlotRouting* routing = nullptr;
      if (!w.expert_map().empty()) {
        auto found = shard_->expert_maps.find(w.expert_map());
        if (found == shard_->expert_maps.end()) {
          return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                              absl::StrCat("sequence ", w.sequence_id(), ": expert map '", w.expert_map(),
                                           "' is not part of this shard"));
        }
        routing = &found->second;
      }
      std::unique_ptr<LayerRoutingPolicy> policy;
      if (!w.layer_router().empty()) {
        auto found = shard_->layer_routers.find(w.layer_router());
        if (found == shard_->layer_routers.end()) {
          return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                              absl::StrCat("sequence ", w.sequence_id(), ": layer router '", w.layer_router(),
                                           "' is not part of this shard"));
        }
        if (!(w.skip_threshold() >= 0.0f && w.skip_threshold() <= 1.0f)) {
          return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              absl::StrCat("sequence ", w.sequence_id(), ": skip_threshold ", w.skip_threshold(),
                                           " is outside [0, 1]"));
        }
        policy = std::make_unique<LayerRoutingPolicy>(&found->second, w.skip_threshold());
      }
      sequences_.erase(w.sequence_id());
      Sequence& sequence =
          sequences_.emplace(w.sequence_id(), Sequence{model.NewCache(), Sampler(params), routing, std::move(policy)})
              .first->second;
      sequence.sampler.SkipSamples(w.sampled_before());
    }
    auto it = sequences_.find(w.sequence_id());
    if (it == sequences_.end()) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, absl::StrCat("unknown sequence ", w.sequence_id()));
    }
    tokens.emplace_back(w.tokens().begin(), w.tokens().end());
    inputs.push_back({it->second.cache.get(), tokens.back(), false, it->second.slot_routing, it->second.layer_policy.get()});
  }
  int64_t rows = 0;
  for (const auto& t : tokens) rows += static_cast<int64_t>(t.size());
  shard_->dispatcher->BeginStep(request->step_id(), rows);
  const auto forward_start = std::chrono::steady_clock::now();
  auto logits = model.Forward(inputs);
  const int64_t forward_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - forward_start).count();
  if (!logits.ok()) {
    // A failed step leaves these sequences in an unknown state: drop them; the coordinator decides.
    for (const v1::SequenceWork& w : request->work()) sequences_.erase(w.sequence_id());
    // UNAVAILABLE from here would read as "this worker is unreachable"; it is a peer that is.
    if (absl::IsUnavailable(logits.status())) {
      return ToGrpcStatus(absl::AbortedError(absl::StrCat("all-to-all: ", logits.status().message())));
    }
    return ToGrpcStatus(logits.status());
  }
  const StepTraffic& traffic = shard_->dispatcher->traffic();
  int64_t row = 0;
  for (int i = 0; i < request->work_size(); ++i) {
    const v1::SequenceWork& w = request->work(i);
    std::span<const float> l(logits->data() + static_cast<size_t>(i) * vocab, static_cast<size_t>(vocab));
    v1::SequenceResult* r = response->add_results();
    r->set_sequence_id(w.sequence_id());
    Sequence& sequence = sequences_.at(w.sequence_id());
    r->set_token(sequence.sampler.Sample(l));
    r->set_layers_executed(static_cast<int32_t>(sequence.cache->layers_per_token()));
    if (w.return_logits()) *r->mutable_logits() = {l.begin(), l.end()};
    int64_t bytes = 0;
    for (int j = 0; j < w.tokens_size(); ++j) bytes += traffic.per_token[row++];
    r->set_all2all_bytes(bytes);
  }
  *response->mutable_layer_all2all_bytes() = {traffic.per_layer.begin(), traffic.per_layer.end()};
  *response->mutable_peer_all2all_bytes() = {traffic.per_peer.begin(), traffic.per_peer.end()};
  *response->mutable_expert_tokens() = {traffic.expert_tokens.begin(), traffic.expert_tokens.end()};
  response->set_forward_ns(forward_ns);
  response->set_exchange_ns(traffic.exchange_ns);
  return grpc::Status::OK;
}

void WorkerService::StopDataPlane() {
  absl::MutexLock lock(&exchange_mutex_);
  if (exchange_ != nullptr) exchange_->Abort(absl::UnavailableError("worker stopping"));
}

grpc::ServerUnaryReactor* WorkerService::Exchange(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                                  grpc::ByteBuffer* response) {
  std::shared_ptr<GrpcExchange> exchange;
  {
    absl::MutexLock lock(&exchange_mutex_);
    exchange = exchange_;
  }
  return ServeExchange(context, request, response, exchange.get());
}

}  // namespace moe
