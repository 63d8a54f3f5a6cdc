#include "coordinator/coordinator.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "common/status.h"
#include "exchange/grpc_exchange.h"
#include "proto/grpc_util.h"
#include "router/layer_router.h"
#include "worker/worker_service.h"

namespace moe {

using Clock = std::chrono::steady_clock;

namespace {
// A stub for the worker at `address`, on a channel of its own (the internal channels' arguments).
std::shared_ptr<v1::Worker::Stub> WorkerStub(const std::string& address) {
  return v1::Worker::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), InternalChannelArguments()));
}
}  // namespace

// ---- RequestHandle ----------------------------------------------------------------------------

RequestHandle::Update RequestHandle::Wait(std::chrono::milliseconds timeout) {
  absl::MutexLock lock(&mutex_);
  struct HasNews {
    const RequestHandle* h;
    bool Ready() const ABSL_NO_THREAD_SAFETY_ANALYSIS { return !h->pending_.empty() || h->done_; }
  } news{this};
  mutex_.AwaitWithTimeout(absl::Condition(&news, &HasNews::Ready), absl::FromChrono(timeout));
  Update u;
  u.tokens.swap(pending_);
  u.done = done_;
  u.reason = reason_;
  u.status = status_;
  u.all2all_bytes = all2all_bytes_;
  u.layers_executed = layers_executed_;
  u.tokens_produced = tokens_produced_;
  return u;
}

void RequestHandle::Cancel() {
  absl::MutexLock lock(&mutex_);
  cancelled_ = true;
}

bool RequestHandle::cancelled() const {
  absl::MutexLock lock(&mutex_);
  return cancelled_;
}

void RequestHandle::Push(int32_t token, int64_t all2all_bytes, int64_t layers_executed, v1::FinishReason finish) {
  absl::MutexLock lock(&mutex_);
  if (done_) return;
  pending_.push_back(token);
  all2all_bytes_ += all2all_bytes;
  layers_executed_ += layers_executed;
  ++tokens_produced_;
  if (finish != v1::FINISH_REASON_UNSPECIFIED) {
    done_ = true;
    reason_ = finish;
  }
}

void RequestHandle::Finish(v1::FinishReason reason) {
  absl::MutexLock lock(&mutex_);
  if (done_) return;
  done_ = true;
  reason_ = reason;
}

void RequestHandle::Fail(absl::Status status) {
  absl::MutexLock lock(&mutex_);
  if (done_) return;
  done_ = true;
  reason_ = v1::FINISH_REASON_ABORT;
  status_ = std::move(status);
}

// ---- Coordinator --------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(const CoordinatorOptions& options) {
  if (options.num_workers < 1) return absl::InvalidArgumentError("the cluster needs at least one worker");
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<ModelSource> source, ModelSource::Open(options.model_dir));
  MOE_ASSIGN_OR_RETURN(ModelIdentity identity, IdentifyModel(*source));
  return std::unique_ptr<Coordinator>(new Coordinator(options, source->config(), std::move(identity)));
}

Coordinator::Coordinator(const CoordinatorOptions& options, ModelConfig config, ModelIdentity identity)
    : options_(options),
      config_(std::move(config)),
      identity_(std::move(identity)),
      metrics_(std::make_unique<ClusterMetrics>(static_cast<int>(config_.num_layers), static_cast<int>(config_.num_experts),
                                                options.num_workers)),
      release_(static_cast<size_t>(options.num_workers)),
      admission_(options.batch) {}

Coordinator::~Coordinator() { Shutdown(); }

uint64_t Coordinator::epoch() const {
  absl::MutexLock lock(&mutex_);
  return shard_map_.epoch;
}

bool Coordinator::ready() const {
  absl::MutexLock lock(&mutex_);
  return ready_;
}

grpc::Status Coordinator::Register(grpc::ServerContext*, const v1::RegisterRequest* request, v1::RegisterResponse* response) {
  absl::MutexLock lock(&mutex_);
  if (request->address().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "register: empty address");
  int slot = -1;
  for (size_t i = 0; i < workers_.size(); ++i) {
    if (workers_[i].address == request->address()) slot = static_cast<int>(i);  // retried, or back after a failure
  }
  if (request->has_requested_slot()) {
    const int wanted = request->requested_slot();
    if (wanted < 0 || wanted >= options_.num_workers) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("requested worker id ", wanted, " is outside [0, ", options_.num_workers, ")"));
    }
    if (wanted < static_cast<int>(workers_.size()) && workers_[wanted].alive && slot != wanted) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                          absl::StrCat("worker id ", wanted, " is taken by ", workers_[wanted].address));
    }
    slot = wanted;
    if (slot >= static_cast<int>(workers_.size())) workers_.resize(static_cast<size_t>(slot + 1));
  }
  if (slot >= 0 && workers_[slot].alive) {
    response->set_worker_id(slot);
    workers_[slot].last_heartbeat = Clock::now();
    return grpc::Status::OK;
  }
  for (size_t i = 0; i < workers_.size() && slot < 0; ++i) {
    if (!workers_[i].alive) slot = static_cast<int>(i);  // a dead worker's slot takes the newcomer
  }
  if (slot < 0) {
    if (static_cast<int>(workers_.size()) >= options_.num_workers) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrCat("the cluster already has its ", options_.num_workers, " workers"));
    }
    slot = static_cast<int>(workers_.size());
    workers_.emplace_back();
  }
  WorkerInfo& w = workers_[slot];
  w.address = request->address();
  w.alive = true;
  w.last_heartbeat = Clock::now();
  metrics_->SetWorkerUp(slot, true);
  w.stub = WorkerStub(w.address);
  membership_changed_ = true;
  response->set_worker_id(slot);
  return grpc::Status::OK;
}

grpc::Status Coordinator::Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* request, v1::HeartbeatResponse*) {
  absl::MutexLock lock(&mutex_);
  const int id = request->worker_id();
  if (id < 0 || id >= static_cast<int>(workers_.size()) || !workers_[id].alive) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat("worker ", id, " is not a member; register again"));
  }
  workers_[id].last_heartbeat = Clock::now();
  return grpc::Status::OK;
}

void Coordinator::MarkDead(int slot, const std::string& why) {
  WorkerInfo& w = workers_[slot];
  if (!w.alive) return;
  w.alive = false;
  membership_changed_ = true;
  metrics_->SetWorkerUp(slot, false);
  metrics_->worker_failures++;
  LogLine(absl::StrCat("worker ", slot, " (", w.address, ") declared dead: ", why));
}

absl::Status Coordinator::WaitUntilReady(std::chrono::milliseconds timeout) {
  {
    absl::MutexLock lock(&mutex_);
    struct AllRegistered {
      const Coordinator* c;
      int Alive() const ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return static_cast<int>(std::count_if(c->workers_.begin(), c->workers_.end(), [](const WorkerInfo& w) { return w.alive; }));
      }
      bool Ready() const ABSL_NO_THREAD_SAFETY_ANALYSIS { return c->stopping_ || Alive() == c->options_.num_workers; }
    } all{this};
    if (!mutex_.AwaitWithTimeout(absl::Condition(&all, &AllRegistered::Ready), absl::FromChrono(timeout))) {
      return absl::DeadlineExceededError(absl::StrCat(all.Alive(), " of ", options_.num_workers,
                                                      " workers registered within ", timeout.count(), " ms"));
    }
    if (stopping_) return absl::CancelledError("shutting down");
  }
  MOE_RETURN_IF_ERROR(Reconfigure());
  absl::MutexLock lock(&mutex_);
  ready_ = true;
  engine_thread_ = std::thread([this] { EngineLoop(); });
  return absl::OkStatus();
}

absl::Status Coordinator::Reconfigure() {
  while (true) {
    std::vector<int> slots;
    std::vector<std::shared_ptr<v1::Worker::Stub>> stubs;
    v1::ShardMapProto proto;
    google::protobuf::RepeatedPtrField<v1::ExpertMapRef> map_refs;
    google::protobuf::RepeatedPtrField<v1::LayerRouterRef> router_refs;
    ShardMap map;
    {
      absl::MutexLock lock(&mutex_);
      membership_changed_ = false;  // a registration from here on triggers another round
      if (options_.fixed_membership) {
        for (size_t w = 0; w < workers_.size() && membership_lost_.ok(); ++w) {
          if (workers_[w].alive) continue;
          membership_lost_ = absl::UnavailableError(absl::StrCat(
              "worker ", w, " (", workers_[w].address, ") died, and this cluster's data plane (MPI) has fixed "
              "membership: restart the job"));
        }
        if (!membership_lost_.ok()) return membership_lost_;
      }
      for (size_t i = 0; i < workers_.size(); ++i) {
        if (!workers_[i].alive) continue;
        slots.push_back(static_cast<int>(i));
        stubs.push_back(workers_[i].stub);
      }
      if (slots.empty()) {
        rank_slot_.clear();
        metrics_->workers_alive = 0;
        return absl::UnavailableError("no live worker is left to serve");
      }
      MOE_ASSIGN_OR_RETURN(map, PlaceExperts(config_, static_cast<int>(slots.size()), options_.expert_load,
                                             options_.placement, shard_map_.epoch + 1));
      for (int slot : slots) map.worker_addresses.push_back(workers_[slot].address);
      PlaceExpertMaps(&map);
      shard_map_.epoch = map.epoch;  // an epoch is never reused, even when this round fails
      ShardMapToProto(map, &proto);
      for (const LoadedMap& m : expert_maps_) {
        v1::ExpertMapRef* ref = map_refs.Add();
        ref->set_name(m.map.name);
        ref->set_path(m.path);
      }
      for (const LoadedLayerRouter& r : layer_routers_) {
        v1::LayerRouterRef* ref = router_refs.Add();
        ref->set_name(r.name);
        ref->set_path(r.path);
      }
    }
    std::string communicator_id;
    if (options_.make_communicator_id) {
      MOE_ASSIGN_OR_RETURN(communicator_id, options_.make_communicator_id());
    }
    std::vector<grpc::Status> status(stubs.size());
    // A stub on a new channel that reached a worker the old channel could not (see below).
    std::vector<std::shared_ptr<v1::Worker::Stub>> reconnected(stubs.size());
    std::vector<std::thread> threads;
    for (size_t rank = 0; rank < stubs.size(); ++rank) {
      threads.emplace_back([&, rank] {
        v1::LoadShardRequest req;
        req.set_worker_id(static_cast<int>(rank));
        *req.mutable_shard_map() = proto;
        *req.mutable_expert_maps() = map_refs;
        *req.mutable_layer_routers() = router_refs;
        req.set_communicator_id(communicator_id);
        // A call that could not connect is tried again, 100 ms more apart each time, each on a new
        // channel: a worker that has just registered refused its first connection once on this 2-core
        // machine (a loaded 4-rank MPI start, where that is fatal), and a live worker's channel failed
        // to connect once under CI's load ("No such file or directory"); a channel that failed to connect
        // fails its next calls at once for its reconnect backoff (1 s and more), so a retry on it proves
        // nothing. A call that reached the worker is not repeated; a dead worker fails every try.
        constexpr int kConnectTries = 5;
        std::shared_ptr<v1::Worker::Stub> stub = stubs[rank];
        for (int attempt = 1;; ++attempt) {
          grpc::ClientContext ctx;
          ctx.set_deadline(DeadlineAfter(std::chrono::minutes(5)));
          v1::LoadShardResponse resp;
          status[rank] = stub->LoadShard(&ctx, req, &resp);
          // gRPC's own words for a call that never reached the server.
          const bool not_connected = status[rank].error_code() == grpc::StatusCode::UNAVAILABLE &&
                                     absl::StrContains(status[rank].error_message(), "failed to connect");
          if (!not_connected || attempt == kConnectTries) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(100 * attempt));
          stub = WorkerStub(map.worker_addresses[rank]);
        }
        if (status[rank].ok() && stub != stubs[rank]) reconnected[rank] = std::move(stub);
      });
    }
    for (auto& t : threads) t.join();
    absl::MutexLock lock(&mutex_);
    // The worker's later calls (steps, heartbeats' checks) go over the channel that reached it, unless it
    // registered again meanwhile.
    for (size_t rank = 0; rank < stubs.size(); ++rank) {
      if (reconnected[rank] && workers_[slots[rank]].stub == stubs[rank]) workers_[slots[rank]].stub = reconnected[rank];
    }
    bool all_loaded = true;
    for (size_t rank = 0; rank < stubs.size(); ++rank) {
      if (status[rank].ok()) continue;
      all_loaded = false;
      const int slot = slots[rank];
      // A map the worker cannot take (invalid, or a data plane with fixed membership such as MPI after
      // a rank died) is not the worker's death: report it rather than loop.
      const bool refused = status[rank].error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
                           status[rank].error_code() == grpc::StatusCode::FAILED_PRECONDITION;
      // A task expert map or layer router being added that a worker cannot take is dropped again; the
      // cluster goes on with what it had.
      auto not_installed = [](const auto& artifact) { return !artifact.installed; };
      const bool adding = std::any_of(expert_maps_.begin(), expert_maps_.end(), not_installed) ||
                          std::any_of(layer_routers_.begin(), layer_routers_.end(), not_installed);
      if (refused && adding) {
        map_refusal_ = absl::StrCat("worker ", slot, " refused it: ", status[rank].error_message());
        std::erase_if(expert_maps_, not_installed);
        std::erase_if(layer_routers_, not_installed);
        break;
      }
      if (refused) {
        return absl::UnavailableError(absl::StrCat("cannot place the experts on the live workers: worker ", slot,
                                                   " refused the shard map: ", status[rank].error_message()));
      }
      if (workers_[slot].stub == stubs[rank]) MarkDead(slot, absl::StrCat("LoadShard failed: ", status[rank].error_message()));
    }
    if (!all_loaded) continue;
    for (LoadedMap& m : expert_maps_) m.installed = true;
    for (LoadedLayerRouter& r : layer_routers_) r.installed = true;
    shard_map_ = std::move(map);
    rank_slot_ = slots;
    metrics_->workers_alive = static_cast<int64_t>(slots.size());
    metrics_->shard_map_epoch = static_cast<int64_t>(shard_map_.epoch);
    metrics_->reconfigurations++;
    break;
  }
  // Every worker dropped its sequences with the old map: restart the running ones on the new ranks,
  // from their prompt plus what they already streamed.
  absl::MutexLock lock(&mutex_);
  const int ranks = static_cast<int>(rank_slot_.size());
  release_.assign(static_cast<size_t>(ranks), {});
  int next_rank = 0;
  for (auto it = running_.begin(); it != running_.end();) {
    Sequence& s = it->second;
    if (s.started) {
      s.started = false;
      metrics_->resumed_requests++;
      if (++s.resumes > options_.max_resumes) {
        s.handle->Fail(absl::UnavailableError(absl::StrCat("request failed after ", options_.max_resumes,
                                                           " resumptions on new shard maps")));
        it = running_.erase(it);
        continue;
      }
    }
    const LoadedMap* task_map = FindMap(s.spec.task);
    s.worker = task_map != nullptr && task_map->home_rank >= 0 ? task_map->home_rank : next_rank++ % ranks;
    ++it;
  }
  CountRunningUsers();  // requests that failed above hold nothing
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<RequestHandle>> Coordinator::Submit(GenerationSpec spec) {
  if (spec.prompt.empty()) return absl::InvalidArgumentError("empty prompt");
  for (int32_t t : spec.prompt) {
    if (t < 0 || t >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token id ", t, " is outside the vocabulary [0, ", config_.vocab_size, ")"));
    }
  }
  if (spec.max_tokens < 1) return absl::InvalidArgumentError("max_tokens must be >= 1");
  if (static_cast<int64_t>(spec.prompt.size()) + spec.max_tokens > config_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt (", spec.prompt.size(), " tokens) + max_tokens (", spec.max_tokens,
                                                   ") is longer than the context of ", config_.max_position_embeddings));
  }
  MOE_RETURN_IF_ERROR(spec.sampling.Validate());
  if (static_cast<int64_t>(spec.prompt.size()) > options_.batch.max_batch_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat("prompt of ", spec.prompt.size(), " tokens exceeds the batch limit of ",
                                                     options_.batch.max_batch_tokens, " tokens"));
  }
  absl::MutexLock lock(&mutex_);
  if (!ready_ || stopping_) return absl::UnavailableError("the cluster is not serving (starting or stopping)");
  if (!membership_lost_.ok()) return membership_lost_;
  if (rank_slot_.empty()) return absl::UnavailableError("no live worker (waiting for workers to register)");
  LoadedMap* task_map = FindMap(spec.task);
  if (!spec.task.empty() && task_map == nullptr) {
    std::string names;
    for (const LoadedMap& m : expert_maps_) {
      if (m.installed) absl::StrAppend(&names, names.empty() ? "" : ", ", m.map.name);
    }
    return absl::InvalidArgumentError(absl::StrCat("unknown task '", spec.task, "' (task expert maps loaded: ",
                                                   names.empty() ? "none" : names, ")"));
  }
  LoadedLayerRouter* layer_router = FindLayerRouter(spec.layer_router);
  if (!spec.layer_router.empty() && layer_router == nullptr) {
    std::string names;
    for (const LoadedLayerRouter& r : layer_routers_) {
      if (r.installed) absl::StrAppend(&names, names.empty() ? "" : ", ", r.name);
    }
    return absl::InvalidArgumentError(absl::StrCat("unknown layer router '", spec.layer_router, "' (loaded: ",
                                                   names.empty() ? "none" : names, ")"));
  }
  if (spec.skip_threshold) {
    if (!(*spec.skip_threshold >= 0.0 && *spec.skip_threshold <= 1.0)) {
      return absl::InvalidArgumentError(absl::StrCat("skip_threshold ", *spec.skip_threshold, " is outside [0, 1]"));
    }
    if (layer_router == nullptr) return absl::InvalidArgumentError("skip_threshold needs a layer_router");
  } else if (layer_router != nullptr) {
    spec.skip_threshold = layer_router->skip_threshold;
  }
  if (static_cast<int>(queue_.size()) >= options_.max_queued) {
    metrics_->requests_rejected++;
    return absl::ResourceExhaustedError(absl::StrCat("request queue is full (", options_.max_queued, " waiting)"));
  }
  if (task_map != nullptr) task_map->requests++;
  if (layer_router != nullptr) layer_router->requests++;
  Sequence s;
  s.id = next_sequence_id_++;
  s.spec = std::move(spec);
  s.handle = std::make_shared<RequestHandle>();
  s.arrival = Clock::now();
  auto handle = s.handle;
  metrics_->requests_total++;
  metrics_->prompt_tokens += static_cast<int64_t>(s.spec.prompt.size());
  queue_.push_back(std::move(s));
  metrics_->queue_depth = static_cast<int64_t>(queue_.size());
  return handle;
}

void Coordinator::FailAll(const absl::Status& status) {
  for (Sequence& s : queue_) s.handle->Fail(status);
  queue_.clear();
  for (auto& [id, s] : running_) s.handle->Fail(status);
  running_.clear();
  CountRunningUsers();
  metrics_->queue_depth = 0;
  metrics_->running = 0;
}

void Coordinator::Shutdown() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  if (engine_thread_.joinable()) engine_thread_.join();
}

void Coordinator::EngineLoop() {
  while (true) {
    bool reconfigure = false;
    const bool continuing = !running_.empty();  // the next step follows at once (no wait for work)
    {
      absl::MutexLock lock(&mutex_);
      struct HasWork {
        const Coordinator* c;
        bool running;
        bool Ready() const ABSL_NO_THREAD_SAFETY_ANALYSIS {
          return c->stopping_ || c->membership_changed_ || running || !c->queue_.empty();
        }
      } work{this, continuing};
      mutex_.AwaitWithTimeout(absl::Condition(&work, &HasWork::Ready), absl::Milliseconds(100));
      if (stopping_) {
        FailAll(absl::UnavailableError("the coordinator is shutting down"));
        return;
      }
      const auto now = Clock::now();
      for (size_t w = 0; w < workers_.size(); ++w) {
        if (workers_[w].alive && now - workers_[w].last_heartbeat > options_.heartbeat_timeout) {
          MarkDead(static_cast<int>(w), absl::StrCat("no heartbeat for ", options_.heartbeat_timeout.count(), " ms"));
        }
      }
      reconfigure = membership_changed_;
    }
    if (reconfigure) {
      absl::Status s = Reconfigure();
      if (!s.ok()) {
        // No map could be installed: every open request ends, and no worker holds the sequences that
        // were waiting to be released.
        absl::MutexLock lock(&mutex_);
        FailAll(s);
        for (auto& r : release_) r.clear();
      }
      continue;
    }
    {
      absl::MutexLock lock(&mutex_);
      std::vector<int> running_per_rank(rank_slot_.size(), 0);
      for (const auto& [id, r] : running_) ++running_per_rank[r.worker];
      admission_.BeginStep(std::move(running_per_rank));
      while (!queue_.empty()) {
        // A task's requests run where its expert map lives (when it has a home).
        const LoadedMap* task_map = FindMap(queue_.front().spec.task);
        const std::optional<int> rank = admission_.Admit(static_cast<int64_t>(queue_.front().spec.prompt.size()),
                                                         task_map != nullptr ? task_map->home_rank : -1);
        if (!rank) break;
        Sequence s = std::move(queue_.front());
        queue_.pop_front();
        s.worker = *rank;
        running_.emplace(s.id, std::move(s));
      }
      metrics_->queue_depth = static_cast<int64_t>(queue_.size());
      metrics_->running = static_cast<int64_t>(running_.size());
      CountRunningUsers();
      if (results_in_ && continuing) {
        metrics_->step_gap_seconds.Observe(std::chrono::duration<double>(Clock::now() - *results_in_).count());
      }
      results_in_.reset();
    }
    bool any_release = false;
    for (const auto& r : release_) any_release |= !r.empty();
    if (running_.empty() && !any_release) continue;
    StepOutcome outcome = RunStep();
    if (!outcome.status.ok()) {
      // The step's effects are unknown on every worker: re-place (without the unreachable ones) and
      // resume every running request. A request whose steps keep failing ends after max_resumes.
      absl::MutexLock lock(&mutex_);
      for (const auto& [rank, why] : outcome.unreachable) MarkDead(rank_slot_[rank], why);
      if (outcome.unreachable.empty()) LogLine(absl::StrCat("step failed, re-placing: ", outcome.status.ToString()));
      membership_changed_ = true;
    }
  }
}

void Coordinator::CountRunningUsers() {
  running_tasks_.clear();
  running_layer_routers_.clear();
  for (const auto& [id, r] : running_) {
    if (!r.spec.task.empty()) running_tasks_[r.spec.task]++;
    if (!r.spec.layer_router.empty()) running_layer_routers_[r.spec.layer_router]++;
  }
}

void Coordinator::ReleaseUsers(const GenerationSpec& spec) {
  absl::MutexLock lock(&mutex_);
  if (auto t = running_tasks_.find(spec.task); t != running_tasks_.end() && t->second > 0) --t->second;
  if (auto l = running_layer_routers_.find(spec.layer_router); l != running_layer_routers_.end() && l->second > 0) {
    --l->second;
  }
}

Coordinator::StepOutcome Coordinator::RunStep() {
  const auto admitted = Clock::now();
  std::vector<std::shared_ptr<v1::Worker::Stub>> stubs;
  std::vector<int> slots;
  uint64_t epoch = 0;
  {
    absl::MutexLock lock(&mutex_);
    slots = rank_slot_;
    for (int slot : slots) stubs.push_back(workers_[slot].stub);
    epoch = shard_map_.epoch;
  }
  const int n = static_cast<int>(slots.size());
  std::vector<v1::StepRequest> requests(static_cast<size_t>(n));
  ++step_id_;
  for (int w = 0; w < n; ++w) {
    requests[w].set_epoch(epoch);
    requests[w].set_step_id(step_id_);
    for (uint64_t id : release_[w]) requests[w].add_release(id);
    release_[w].clear();
  }
  int64_t prefills = 0, prefill_rows = 0;  // sequences this step prefills; their rows beyond one each
  for (auto it = running_.begin(); it != running_.end();) {
    Sequence& s = it->second;
    if (s.handle->cancelled()) {  // client gone or stop string: free it now
      if (s.started) requests[s.worker].add_release(s.id);
      ReleaseUsers(s.spec);
      s.handle->Finish(v1::FINISH_REASON_ABORT);
      it = running_.erase(it);
      continue;
    }
    v1::SequenceWork* work = requests[s.worker].add_work();
    work->set_sequence_id(s.id);
    if (!s.started) {  // first step, or resumed on a new map: prefill the prompt and what was streamed
      ++prefills;
      work->set_start(true);
      *work->mutable_tokens() = {s.spec.prompt.begin(), s.spec.prompt.end()};
      work->mutable_tokens()->Add(s.generated.begin(), s.generated.end());
      prefill_rows += work->tokens_size() - 1;
      work->set_sampled_before(static_cast<int64_t>(s.generated.size()));
      work->set_temperature(s.spec.sampling.temperature);
      work->set_top_p(s.spec.sampling.top_p);
      work->set_top_k(s.spec.sampling.top_k);
      work->set_seed(s.spec.sampling.seed);
      work->set_expert_map(s.spec.task);
      work->set_layer_router(s.spec.layer_router);
      work->set_skip_threshold(static_cast<float>(s.spec.skip_threshold.value_or(0.0)));
      s.started = true;
    } else {
      work->add_tokens(s.generated.back());
    }
    ++it;
  }

  struct Call {
    grpc::ClientContext context;
    v1::StepResponse response;
    grpc::Status status;
    bool done = false;
  };
  std::vector<Call> calls(static_cast<size_t>(n));
  absl::Mutex mutex;
  int pending = n;
  bool unreachable = false;  // a worker is gone: the others may wait in the all-to-all for it
  for (int w = 0; w < n; ++w) {
    calls[w].context.set_deadline(DeadlineAfter(options_.step_timeout));
    stubs[w]->async()->Step(&calls[w].context, &requests[w], &calls[w].response, [&, w](grpc::Status s) {
      absl::MutexLock lock(&mutex);
      unreachable |= s.error_code() == grpc::StatusCode::UNAVAILABLE;
      calls[w].status = std::move(s);
      calls[w].done = true;
      --pending;
    });
  }
  {
    absl::MutexLock lock(&mutex);
    struct Settled {
      int* pending;
      bool* unreachable;
      bool Ready() const { return *pending == 0 || *unreachable; }
    } settled{&pending, &unreachable};
    mutex.Await(absl::Condition(&settled, &Settled::Ready));  // each call has a deadline
    if (pending > 0) {
      for (Call& c : calls) {
        if (!c.done) c.context.TryCancel();  // the next shard map aborts their collectives
      }
      mutex.Await(absl::Condition(+[](int* p) { return *p == 0; }, &pending));
    }
  }
  metrics_->steps++;
  StepOutcome outcome;
  for (int w = 0; w < n; ++w) {
    const grpc::StatusCode code = calls[w].status.error_code();
    if (code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED) {
      outcome.unreachable.emplace_back(w, absl::StrCat("step ", step_id_, " failed: ", calls[w].status.error_message()));
    }
    if (!calls[w].status.ok() && code != grpc::StatusCode::CANCELLED && outcome.status.ok()) {
      outcome.status = FromGrpcStatus(calls[w].status, absl::StrCat("worker ", slots[w], " step ", step_id_));
    }
  }
  if (!outcome.status.ok()) return outcome;
  const auto now = Clock::now();
  const double step_seconds = std::chrono::duration<double>(now - admitted).count();
  metrics_->step_seconds.Observe(step_seconds);
  if (prefills > 0) {  // counted when the step succeeded: a failed step's sequences are prefilled again
    metrics_->prefill_steps++;
    metrics_->prefilled_sequences += prefills;
    metrics_->prefill_rows += prefill_rows;
    metrics_->prefill_step_seconds.Observe(step_seconds);
  }
  results_in_ = now;
  struct TaskTokens {
    int64_t tokens = 0, bytes = 0, layers = 0;
  };
  std::map<std::string, TaskTokens> task_tokens, router_tokens;
  // The tokens go out after every count of this step is made: a client that has its last token then
  // finds it in /metrics and in the maps' and routers' usage.
  struct Delivery {
    std::shared_ptr<RequestHandle> handle;
    int32_t token = 0;
    int64_t all2all_bytes = 0;
    int32_t layers = 0;
    v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  };
  std::vector<Delivery> deliveries;
  for (int w = 0; w < n; ++w) {
    const v1::StepResponse& resp = calls[w].response;
    std::vector<int64_t> per_slot(static_cast<size_t>(options_.num_workers), 0);
    for (int peer = 0; peer < resp.peer_all2all_bytes_size() && peer < n; ++peer) per_slot[slots[peer]] = resp.peer_all2all_bytes(peer);
    metrics_->AddStepTraffic(slots[w], {resp.layer_all2all_bytes().begin(), resp.layer_all2all_bytes().end()}, per_slot,
                             {resp.expert_tokens().begin(), resp.expert_tokens().end()}, resp.results_size(),
                             resp.forward_ns(), resp.exchange_ns());
    for (const v1::SequenceResult& r : resp.results()) {
      auto it = running_.find(r.sequence_id());
      if (it == running_.end()) continue;
      Sequence& s = it->second;
      const bool eos = !s.spec.ignore_eos && std::find(config_.eos_token_ids.begin(), config_.eos_token_ids.end(),
                                                        r.token()) != config_.eos_token_ids.end();
      const bool last = eos || static_cast<int64_t>(s.generated.size()) + 1 >= s.spec.max_tokens;
      if (last) ReleaseUsers(s.spec);
      deliveries.push_back({s.handle, r.token(), r.all2all_bytes(), r.layers_executed(),
                            !last ? v1::FINISH_REASON_UNSPECIFIED : eos ? v1::FINISH_REASON_EOS : v1::FINISH_REASON_LENGTH});
      metrics_->tokens_generated++;
      metrics_->AddTaskToken(s.spec.task, r.all2all_bytes());
      metrics_->layers_executed += r.layers_executed();
      if (!s.spec.task.empty()) {
        task_tokens[s.spec.task].tokens++;
        task_tokens[s.spec.task].bytes += r.all2all_bytes();
      }
      if (!s.spec.layer_router.empty()) {
        router_tokens[s.spec.layer_router].tokens++;
        router_tokens[s.spec.layer_router].layers += r.layers_executed();
      }
      const bool first = s.generated.empty();
      (first ? metrics_->ttft_seconds : metrics_->inter_token_seconds)
          .Observe(std::chrono::duration<double>(now - (first ? s.arrival : s.last_token_time)).count());
      s.last_token_time = now;
      s.generated.push_back(r.token());
      if (last) {
        release_[s.worker].push_back(s.id);
        running_.erase(it);
      }
    }
  }
  if (!task_tokens.empty() || !router_tokens.empty()) {
    absl::MutexLock lock(&mutex_);
    for (LoadedMap& m : expert_maps_) {
      auto it = task_tokens.find(m.map.name);
      if (it == task_tokens.end()) continue;
      m.completion_tokens += it->second.tokens;
      m.all2all_bytes += it->second.bytes;
    }
    for (LoadedLayerRouter& r : layer_routers_) {
      auto it = router_tokens.find(r.name);
      if (it == router_tokens.end()) continue;
      r.completion_tokens += it->second.tokens;
      r.layers_executed += it->second.layers;
    }
  }
  for (const Delivery& d : deliveries) d.handle->Push(d.token, d.all2all_bytes, d.layers, d.finish);
  return outcome;
}

// ---- Task expert maps -----------------------------------------------------------------------------

Coordinator::LoadedMap* Coordinator::FindMap(const std::string& name) {
  if (name.empty()) return nullptr;
  for (LoadedMap& m : expert_maps_) {
    if (m.map.name == name && m.installed) return &m;
  }
  return nullptr;
}

void Coordinator::PlaceExpertMaps(ShardMap* map) {
  const bool at_home = options_.placement.task_maps_at_home;
  for (size_t i = 0; i < expert_maps_.size(); ++i) {
    LoadedMap& m = expert_maps_[i];
    m.home_rank = at_home ? static_cast<int>(i % static_cast<size_t>(map->num_workers)) : -1;
    for (const LayerExpertMap& lm : m.map.layers) {
      auto& owners = map->owners[lm.layer];
      for (size_t merged = 0; merged < lm.merged.size(); ++merged) {
        owners.push_back({at_home ? m.home_rank : static_cast<int>(owners.size() % static_cast<size_t>(map->num_workers))});
      }
      if (!at_home) continue;
      for (int32_t target : lm.slot_to_expert) {
        if (target == kNoExpert || target >= config_.num_experts) continue;
        auto& replicas = owners[target];
        if (std::find(replicas.begin(), replicas.end(), m.home_rank) == replicas.end()) replicas.push_back(m.home_rank);
      }
    }
  }
}

v1::ExpertMapInfo Coordinator::MapInfo(const LoadedMap& m) const {
  v1::ExpertMapInfo info;
  info.set_name(m.map.name);
  info.set_task(m.map.task);
  info.set_method(m.map.method);
  info.set_pruning_factor(m.map.pruning_factor);
  info.set_path(m.path);
  for (const LayerExpertMap& lm : m.map.layers) info.add_reachable_experts(m.map.ReachableExperts(lm.layer));
  info.set_home_worker(m.home_rank >= 0 && m.home_rank < static_cast<int>(rank_slot_.size()) ? rank_slot_[m.home_rank] : -1);
  info.set_requests(m.requests);
  info.set_completion_tokens(m.completion_tokens);
  info.set_all2all_bytes(m.all2all_bytes);
  return info;
}

absl::StatusOr<v1::ExpertMapInfo> Coordinator::LoadExpertMap(const std::string& path, std::chrono::milliseconds timeout) {
  // Read with weights once, so that shapes are checked here and a bad map never reaches the workers.
  MOE_ASSIGN_OR_RETURN(ExpertMap map, ReadExpertMap(path, /*with_weights=*/true));
  MOE_RETURN_IF_ERROR(ValidateExpertMap(map, identity_, config_.top_k));
  for (LayerExpertMap& lm : map.layers) {
    for (MergedExpert& m : lm.merged) m.weights = {};
  }
  const std::string name = map.name;
  absl::MutexLock lock(&mutex_);
  if (!ready_ || stopping_) return absl::UnavailableError("the cluster is not serving (starting or stopping)");
  for (const LoadedMap& m : expert_maps_) {
    if (m.map.name == name) return absl::AlreadyExistsError(absl::StrCat("an expert map named '", name, "' is loaded"));
  }
  expert_maps_.push_back({std::move(map), path});
  MOE_ASSIGN_OR_RETURN(const bool installed, AwaitInstalled([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> std::optional<bool> {
                         for (const LoadedMap& m : expert_maps_) {
                           if (m.map.name == name) return m.installed ? std::optional<bool>(true) : std::nullopt;
                         }
                         return false;
                       }, timeout));
  if (!installed) return absl::FailedPreconditionError(absl::StrCat("expert map '", name, "' was not installed: ", map_refusal_));
  for (const LoadedMap& m : expert_maps_) {
    if (m.map.name == name) return MapInfo(m);
  }
  return absl::InternalError("installed expert map vanished");
}

absl::StatusOr<bool> Coordinator::AwaitInstalled(const std::function<std::optional<bool>()>& installed,
                                                 std::chrono::milliseconds timeout) {
  map_refusal_.clear();
  membership_changed_ = true;
  struct Settled {
    const Coordinator* c;
    const std::function<std::optional<bool>()>* installed;
    bool Ready() const ABSL_NO_THREAD_SAFETY_ANALYSIS { return c->stopping_ || (*installed)().has_value(); }
  } settled{this, &installed};
  if (!mutex_.AwaitWithTimeout(absl::Condition(&settled, &Settled::Ready), absl::FromChrono(timeout))) {
    return absl::DeadlineExceededError("the workers have not installed it yet; they still will");
  }
  if (stopping_) return absl::UnavailableError("the coordinator is shutting down");
  return *installed();
}

absl::Status Coordinator::AwaitNewShardMap(const std::string& what, std::chrono::milliseconds timeout) {
  membership_changed_ = true;
  const uint64_t epoch = shard_map_.epoch;
  struct Replaced {
    const Coordinator* c;
    uint64_t epoch;
    bool Ready() const ABSL_NO_THREAD_SAFETY_ANALYSIS { return c->stopping_ || c->shard_map_.epoch > epoch; }
  } replaced{this, epoch};
  if (!mutex_.AwaitWithTimeout(absl::Condition(&replaced, &Replaced::Ready), absl::FromChrono(timeout))) {
    return absl::DeadlineExceededError(absl::StrCat(what, " is removed; the workers have not dropped it yet"));
  }
  return absl::OkStatus();
}

std::vector<v1::ExpertMapInfo> Coordinator::ListExpertMaps() const {
  absl::MutexLock lock(&mutex_);
  std::vector<v1::ExpertMapInfo> out;
  for (const LoadedMap& m : expert_maps_) {
    if (m.installed) out.push_back(MapInfo(m));
  }
  return out;
}

absl::Status Coordinator::RemoveExpertMap(const std::string& name, std::chrono::milliseconds timeout) {
  absl::MutexLock lock(&mutex_);
  auto it = std::find_if(expert_maps_.begin(), expert_maps_.end(), [&](const LoadedMap& m) { return m.map.name == name; });
  if (it == expert_maps_.end()) return absl::NotFoundError(absl::StrCat("no expert map named '", name, "' is loaded"));
  int64_t users = 0;
  for (const Sequence& s : queue_) users += s.spec.task == name;
  auto running = running_tasks_.find(name);
  if (running != running_tasks_.end()) users += running->second;
  if (users > 0) {
    return absl::FailedPreconditionError(absl::StrCat("expert map '", name, "' is used by ", users,
                                                      " queued or running requests; remove it when they are done"));
  }
  expert_maps_.erase(it);
  return AwaitNewShardMap(absl::StrCat("expert map '", name, "'"), timeout);
}

// ---- Layer routers --------------------------------------------------------------------------------

Coordinator::LoadedLayerRouter* Coordinator::FindLayerRouter(const std::string& name) {
  if (name.empty()) return nullptr;
  for (LoadedLayerRouter& r : layer_routers_) {
    if (r.name == name && r.installed) return &r;
  }
  return nullptr;
}

v1::LayerRouterInfo Coordinator::LayerRouterInfo(const LoadedLayerRouter& r) const {
  v1::LayerRouterInfo info;
  info.set_name(r.name);
  info.set_path(r.path);
  for (const std::string& t : r.tasks) info.add_tasks(t);
  info.set_skip_threshold(r.skip_threshold);
  info.set_requests(r.requests);
  info.set_completion_tokens(r.completion_tokens);
  info.set_layers_executed(r.layers_executed);
  return info;
}

absl::StatusOr<v1::LayerRouterInfo> Coordinator::LoadLayerRouter(const std::string& path,
                                                                 std::chrono::milliseconds timeout) {
  MOE_ASSIGN_OR_RETURN(LayerRouter router, ReadLayerRouter(path));
  MOE_RETURN_IF_ERROR(ValidateLayerRouter(router, identity_));
  const std::string name = router.name;
  absl::MutexLock lock(&mutex_);
  if (!ready_ || stopping_) return absl::UnavailableError("the cluster is not serving (starting or stopping)");
  for (const LoadedLayerRouter& r : layer_routers_) {
    if (r.name == name) return absl::AlreadyExistsError(absl::StrCat("a layer router named '", name, "' is loaded"));
  }
  layer_routers_.push_back({name, path, router.tasks, router.skip_threshold});
  MOE_ASSIGN_OR_RETURN(const bool installed, AwaitInstalled([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> std::optional<bool> {
                         for (const LoadedLayerRouter& r : layer_routers_) {
                           if (r.name == name) return r.installed ? std::optional<bool>(true) : std::nullopt;
                         }
                         return false;
                       }, timeout));
  if (!installed) return absl::FailedPreconditionError(absl::StrCat("layer router '", name, "' was not installed: ", map_refusal_));
  return LayerRouterInfo(*FindLayerRouter(name));
}

std::vector<v1::LayerRouterInfo> Coordinator::ListLayerRouters() const {
  absl::MutexLock lock(&mutex_);
  std::vector<v1::LayerRouterInfo> out;
  for (const LoadedLayerRouter& r : layer_routers_) {
    if (r.installed) out.push_back(LayerRouterInfo(r));
  }
  return out;
}

absl::Status Coordinator::RemoveLayerRouter(const std::string& name, std::chrono::milliseconds timeout) {
  absl::MutexLock lock(&mutex_);
  auto it = std::find_if(layer_routers_.begin(), layer_routers_.end(), [&](const LoadedLayerRouter& r) { return r.name == name; });
  if (it == layer_routers_.end()) return absl::NotFoundError(absl::StrCat("no layer router named '", name, "' is loaded"));
  int64_t users = 0;
  for (const Sequence& s : queue_) users += s.spec.layer_router == name;
  auto running = running_layer_routers_.find(name);
  if (running != running_layer_routers_.end()) users += running->second;
  if (users > 0) {
    return absl::FailedPreconditionError(absl::StrCat("layer router '", name, "' is used by ", users,
                                                      " queued or running requests; remove it when they are done"));
  }
  layer_routers_.erase(it);
  return AwaitNewShardMap(absl::StrCat("layer router '", name, "'"), timeout);
}

}  // namespace moe
