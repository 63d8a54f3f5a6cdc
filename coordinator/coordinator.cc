#include "coordinator/coordinator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/status.h"
#include "exchange/grpc_exchange.h"
#include "proto/grpc_util.h"
#include "worker/worker_service.h"

namespace moe {

using Clock = std::chrono::steady_clock;

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

void RequestHandle::Push(int32_t token, int64_t all2all_bytes) {
  absl::MutexLock lock(&mutex_);
  if (done_) return;
  pending_.push_back(token);
  all2all_bytes_ += all2all_bytes;
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
  MOE_ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile(options.model_dir + "/config.json"));
  return std::unique_ptr<Coordinator>(new Coordinator(options, std::move(config)));
}

Coordinator::Coordinator(const CoordinatorOptions& options, ModelConfig config)
    : options_(options),
      config_(std::move(config)),
      metrics_(std::make_unique<ClusterMetrics>(static_cast<int>(config_.num_layers), static_cast<int>(config_.num_experts),
                                                options.num_workers)),
      release_(static_cast<size_t>(options.num_workers)) {}

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
  for (size_t i = 0; i < workers_.size(); ++i) {
    if (workers_[i].address == request->address()) {  // a retried registration
      response->set_worker_id(static_cast<int>(i));
      workers_[i].last_heartbeat = Clock::now();
      return grpc::Status::OK;
    }
  }
  if (static_cast<int>(workers_.size()) >= options_.num_workers) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("the cluster already has its ", options_.num_workers, " workers"));
  }
  WorkerInfo w;
  w.address = request->address();
  w.last_heartbeat = Clock::now();
  w.stub = v1::Worker::NewStub(grpc::CreateCustomChannel(w.address, grpc::InsecureChannelCredentials(),
                                                         InternalChannelArguments()));
  workers_.push_back(std::move(w));
  response->set_worker_id(static_cast<int>(workers_.size() - 1));
  return grpc::Status::OK;
}

grpc::Status Coordinator::Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* request, v1::HeartbeatResponse*) {
  absl::MutexLock lock(&mutex_);
  const int id = request->worker_id();
  if (id < 0 || id >= static_cast<int>(workers_.size())) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat("unknown worker ", id));
  }
  workers_[id].last_heartbeat = Clock::now();
  return grpc::Status::OK;
}

absl::Status Coordinator::WaitUntilReady(std::chrono::milliseconds timeout) {
  {
    absl::MutexLock lock(&mutex_);
    struct AllRegistered {
      const Coordinator* c;
      bool Ready() const ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return c->stopping_ || static_cast<int>(c->workers_.size()) == c->options_.num_workers;
      }
    } all{this};
    if (!mutex_.AwaitWithTimeout(absl::Condition(&all, &AllRegistered::Ready), absl::FromChrono(timeout))) {
      return absl::DeadlineExceededError(absl::StrCat(workers_.size(), " of ", options_.num_workers,
                                                      " workers registered within ", timeout.count(), " ms"));
    }
    if (stopping_) return absl::CancelledError("shutting down");
  }
  MOE_RETURN_IF_ERROR(LoadShards());
  absl::MutexLock lock(&mutex_);
  ready_ = true;
  engine_thread_ = std::thread([this] { EngineLoop(); });
  return absl::OkStatus();
}

absl::Status Coordinator::LoadShards() {
  std::vector<v1::Worker::Stub*> stubs;
  v1::ShardMapProto proto;
  {
    absl::MutexLock lock(&mutex_);
    MOE_ASSIGN_OR_RETURN(shard_map_, PlaceExperts(config_, options_.num_workers, options_.expert_load, options_.placement, shard_map_.epoch + 1));
    for (const WorkerInfo& w : workers_) {
      shard_map_.worker_addresses.push_back(w.address);
      stubs.push_back(w.stub.get());
    }
    ShardMapToProto(shard_map_, &proto);
  }
  std::vector<absl::Status> status(stubs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < stubs.size(); ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(DeadlineAfter(std::chrono::minutes(5)));
      v1::LoadShardRequest req;
      req.set_worker_id(static_cast<int>(i));
      *req.mutable_shard_map() = proto;
      v1::LoadShardResponse resp;
      status[i] = FromGrpcStatus(stubs[i]->LoadShard(&ctx, req, &resp), absl::StrCat("worker ", i, " LoadShard"));
    });
  }
  for (auto& t : threads) t.join();
  for (const absl::Status& s : status) MOE_RETURN_IF_ERROR(s);
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
  if (!spec.task.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown task '", spec.task, "' (no task expert maps are loaded)"));
  }
  if (static_cast<int64_t>(spec.prompt.size()) > options_.max_batch_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat("prompt of ", spec.prompt.size(), " tokens exceeds the batch limit of ",
                                                     options_.max_batch_tokens, " tokens"));
  }
  absl::MutexLock lock(&mutex_);
  if (!failed_.ok()) return failed_;
  if (!ready_ || stopping_) return absl::UnavailableError("the cluster is not serving (starting or stopping)");
  if (static_cast<int>(queue_.size()) >= options_.max_queued) {
    metrics_->requests_rejected++;
    return absl::ResourceExhaustedError(absl::StrCat("request queue is full (", options_.max_queued, " waiting)"));
  }
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
    {
      absl::MutexLock lock(&mutex_);
      struct HasWork {
        const Coordinator* c;
        bool running;
        bool Ready() const ABSL_NO_THREAD_SAFETY_ANALYSIS { return c->stopping_ || running || !c->queue_.empty(); }
      } work{this, !running_.empty()};
      mutex_.AwaitWithTimeout(absl::Condition(&work, &HasWork::Ready), absl::Milliseconds(100));
      if (stopping_) {
        FailAll(absl::UnavailableError("the coordinator is shutting down"));
        return;
      }
      const auto now = Clock::now();
      for (size_t w = 0; w < workers_.size() && failed_.ok(); ++w) {
        if (now - workers_[w].last_heartbeat > options_.heartbeat_timeout) {
          failed_ = absl::UnavailableError(absl::StrCat("worker ", w, " (", workers_[w].address, ") stopped answering"));
        }
      }
      if (!failed_.ok()) {
        FailAll(failed_);
        continue;
      }
      // Admission: FIFO, bounded by running slots and prompt tokens per step.
      int64_t budget = options_.max_batch_tokens;
      while (!queue_.empty() && static_cast<int>(running_.size()) < options_.max_running &&
             static_cast<int64_t>(queue_.front().spec.prompt.size()) <= budget) {
        Sequence s = std::move(queue_.front());
        queue_.pop_front();
        budget -= static_cast<int64_t>(s.spec.prompt.size());
        std::vector<int> load(static_cast<size_t>(options_.num_workers), 0);
        for (const auto& [id, r] : running_) ++load[r.worker];
        s.worker = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
        running_.emplace(s.id, std::move(s));
      }
      metrics_->queue_depth = static_cast<int64_t>(queue_.size());
      metrics_->running = static_cast<int64_t>(running_.size());
    }
    bool any_release = false;
    for (const auto& r : release_) any_release |= !r.empty();
    if (running_.empty() && !any_release) continue;
    absl::Status s = RunStep();
    if (!s.ok()) {
      // The workers dropped the step's sequences; their requests end with the error.
      absl::MutexLock lock(&mutex_);
      for (auto& [id, seq] : running_) seq.handle->Fail(s);
      running_.clear();
      for (auto& r : release_) r.clear();
    }
  }
}

absl::Status Coordinator::RunStep() {
  const int n = options_.num_workers;
  std::vector<v1::StepRequest> requests(static_cast<size_t>(n));
  std::vector<v1::Worker::Stub*> stubs;
  {
    absl::MutexLock lock(&mutex_);
    for (const WorkerInfo& w : workers_) stubs.push_back(w.stub.get());
    for (auto& r : requests) r.set_epoch(shard_map_.epoch);
  }
  ++step_id_;
  for (int w = 0; w < n; ++w) {
    requests[w].set_step_id(step_id_);
    for (uint64_t id : release_[w]) requests[w].add_release(id);
    release_[w].clear();
  }
  for (auto it = running_.begin(); it != running_.end();) {
    Sequence& s = it->second;
    if (s.handle->cancelled()) {  // client gone or stop string: free it now
      if (s.started) requests[s.worker].add_release(s.id);
      s.handle->Finish(v1::FINISH_REASON_ABORT);
      it = running_.erase(it);
      continue;
    }
    v1::SequenceWork* work = requests[s.worker].add_work();
    work->set_sequence_id(s.id);
    if (!s.started) {
      work->set_start(true);
      *work->mutable_tokens() = {s.spec.prompt.begin(), s.spec.prompt.end()};
      work->set_temperature(s.spec.sampling.temperature);
      work->set_top_p(s.spec.sampling.top_p);
      work->set_top_k(s.spec.sampling.top_k);
      work->set_seed(s.spec.sampling.seed);
      s.started = true;
    } else {
      work->add_tokens(s.last_token);
    }
    ++it;
  }

  struct Call {
    grpc::ClientContext context;
    v1::StepResponse response;
    grpc::Status status;
  };
  std::vector<Call> calls(static_cast<size_t>(n));
  absl::Mutex mutex;
  int pending = n;
  for (int w = 0; w < n; ++w) {
    calls[w].context.set_deadline(DeadlineAfter(options_.step_timeout));
    stubs[w]->async()->Step(&calls[w].context, &requests[w], &calls[w].response, [&, w](grpc::Status s) {
      absl::MutexLock lock(&mutex);
      calls[w].status = std::move(s);
      --pending;
    });
  }
  {
    absl::MutexLock lock(&mutex);
    mutex.Await(absl::Condition(+[](int* p) { return *p == 0; }, &pending));  // each call has a deadline
  }
  metrics_->steps++;
  for (int w = 0; w < n; ++w) {
    if (!calls[w].status.ok()) return FromGrpcStatus(calls[w].status, absl::StrCat("worker ", w, " step ", step_id_));
  }
  const auto now = Clock::now();
  for (int w = 0; w < n; ++w) {
    const v1::StepResponse& resp = calls[w].response;
    metrics_->AddStepTraffic(w, {resp.layer_all2all_bytes().begin(), resp.layer_all2all_bytes().end()},
                             {resp.peer_all2all_bytes().begin(), resp.peer_all2all_bytes().end()},
                             {resp.expert_tokens().begin(), resp.expert_tokens().end()});
    for (const v1::SequenceResult& r : resp.results()) {
      auto it = running_.find(r.sequence_id());
      if (it == running_.end()) continue;
      Sequence& s = it->second;
      s.handle->Push(r.token(), r.all2all_bytes());
      metrics_->tokens_generated++;
      (s.generated == 0 ? metrics_->ttft_seconds : metrics_->inter_token_seconds)
          .Observe(std::chrono::duration<double>(now - (s.generated == 0 ? s.arrival : s.last_token_time)).count());
      s.last_token_time = now;
      s.last_token = r.token();
      ++s.generated;
      const bool eos = std::find(config_.eos_token_ids.begin(), config_.eos_token_ids.end(), r.token()) !=
                       config_.eos_token_ids.end();
      if (eos || s.generated >= s.spec.max_tokens) {
        s.handle->Finish(eos ? v1::FINISH_REASON_EOS : v1::FINISH_REASON_LENGTH);
        release_[s.worker].push_back(s.id);
        running_.erase(it);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace moe
