// The coordinator's core: membership, placement, admission and the continuous-batching engine loop that
// drives every worker one step at a time. The gRPC front ends (inference_service.h, the Coordinator
// service below) are thin layers over it.
//
// Failure model (DESIGN.md): a worker is declared dead when it misses heartbeats for heartbeat_timeout
// or its Step call finds it unreachable. Between two engine steps the coordinator then re-places every
// expert on the live workers under a new epoch (LoadShard aborts any collective still waiting for the
// dead peer), and resumes every in-flight request by prefilling its prompt plus the tokens it already
// streamed; the client sees each token once. A worker that registers again (or a new one, up to
// num_workers) triggers the same re-placement and is used from then on.
#ifndef MOE_COORDINATOR_COORDINATOR_H_
#define MOE_COORDINATOR_COORDINATOR_H_

#include <chrono>
#include <deque>
#include <functional>
#include <optional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "checkpoint/model_config.h"
#include "common/shard_map.h"
#include "coordinator/batching.h"
#include "coordinator/metrics.h"
#include "coordinator/placement.h"
#include "engine/sampler.h"
#include "moe/v1/cluster.grpc.pb.h"
#include "moe/v1/inference.pb.h"
#include "router/expert_map.h"

namespace moe {

struct CoordinatorOptions {
  std::string model_dir;
  int num_workers = 1;
  int max_queued = 256;             // waiting requests beyond this: RESOURCE_EXHAUSTED
  BatchLimits batch;  // admission per engine step; a prompt longer than batch.max_batch_tokens is refused
  std::chrono::milliseconds heartbeat_timeout{1500};
  std::chrono::milliseconds step_timeout{60000};
  int max_resumes = 3;  // a request resumed more often than this fails (a step that fails every time)
  // The workers' data plane cannot change members (MPI): a dead worker ends the service, and every
  // open and later request gets UNAVAILABLE at once instead of waiting for a re-placement.
  bool fixed_membership = false;
  // The workers' data plane needs a communicator made for each membership (NCCL): called once per
  // epoch, and the id goes to every worker in that epoch's LoadShard. Unset: none (gRPC, MPI).
  std::function<absl::StatusOr<std::string>()> make_communicator_id;
  PlacementOptions placement;
  std::vector<std::vector<double>> expert_load;  // measured load for placement; empty = uniform
};

// A validated request in token space.
struct GenerationSpec {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;
  SamplingParams sampling;
  std::string task;
  std::string layer_router;     // Dr.LLM layer router name; empty = every layer once
  std::optional<double> skip_threshold;  // in [0, 1], with a layer_router only; none: the router's default
  bool ignore_eos = false;               // true: only max_tokens (or a stop string) ends the answer
};

// What the scheduler has produced for one request; shared by the scheduler (producer) and the
// request's RPC handler (consumer).
class RequestHandle {
 public:
  struct Update {
    std::vector<int32_t> tokens;  // new since the previous Wait
    bool done = false;
    v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
    absl::Status status;  // not OK when the request failed
    int64_t all2all_bytes = 0;
    int64_t layers_executed = 0;  // summed over the tokens produced so far
    int64_t tokens_produced = 0;  // every token pushed so far, the final EOS included
  };
  // Returns what arrived, waiting at most `timeout` for something to arrive.
  Update Wait(std::chrono::milliseconds timeout);
  // Asks the scheduler to drop the request (client gone, stop string seen). Idempotent.
  void Cancel();
  bool cancelled() const;

  // Scheduler side. A token that ends the request carries its finish reason, so that no Wait ever sees
  // the final (EOS) token without also seeing the request done.
  void Push(int32_t token, int64_t all2all_bytes, int64_t layers_executed,
            v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED);
  void Finish(v1::FinishReason reason);
  void Fail(absl::Status status);

 private:
  mutable absl::Mutex mutex_;
  std::vector<int32_t> pending_ ABSL_GUARDED_BY(mutex_);
  bool done_ ABSL_GUARDED_BY(mutex_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mutex_) = false;
  v1::FinishReason reason_ ABSL_GUARDED_BY(mutex_) = v1::FINISH_REASON_UNSPECIFIED;
  absl::Status status_ ABSL_GUARDED_BY(mutex_);
  int64_t all2all_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t layers_executed_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t tokens_produced_ ABSL_GUARDED_BY(mutex_) = 0;
};

class Coordinator final : public v1::Coordinator::Service {
 public:
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(const CoordinatorOptions& options);
  ~Coordinator() override;

  const ModelConfig& config() const { return config_; }
  ClusterMetrics& metrics() { return *metrics_; }
  uint64_t epoch() const;
  bool ready() const;

  // Control plane.
  grpc::Status Register(grpc::ServerContext*, const v1::RegisterRequest*, v1::RegisterResponse*) override;
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest*, v1::HeartbeatResponse*) override;

  // Waits until all num_workers workers have registered and loaded their shards (then the engine loop
  // runs; from then on the cluster serves with whichever workers are alive).
  absl::Status WaitUntilReady(std::chrono::milliseconds timeout);

  // Validates and enqueues a request. INVALID_ARGUMENT (bad prompt, sampling, task, length),
  // RESOURCE_EXHAUSTED (queue full, prompt over the batch limit), UNAVAILABLE (not ready, no live worker).
  absl::StatusOr<std::shared_ptr<RequestHandle>> Submit(GenerationSpec spec);

  // Stops the engine loop; every request still open fails with UNAVAILABLE.
  void Shutdown();

  // Task expert maps (router admin). Loading checks the map against the served model, adds it, and
  // waits (up to `timeout`) until the workers have installed it under a new shard map; requests in
  // flight are resumed on that map. INVALID_ARGUMENT / NOT_FOUND (unreadable or malformed map),
  // FAILED_PRECONDITION (another model, or a worker refused it), ALREADY_EXISTS (name taken),
  // DEADLINE_EXCEEDED, UNAVAILABLE (not serving).
  absl::StatusOr<v1::ExpertMapInfo> LoadExpertMap(const std::string& path, std::chrono::milliseconds timeout);
  std::vector<v1::ExpertMapInfo> ListExpertMaps() const;
  // NOT_FOUND, or FAILED_PRECONDITION while a queued or running request uses the map.
  absl::Status RemoveExpertMap(const std::string& name, std::chrono::milliseconds timeout);

  // Dr.LLM layer routers (router admin), installed on the workers like expert maps (under a new shard
  // map, requests in flight resumed) and with the same errors.
  absl::StatusOr<v1::LayerRouterInfo> LoadLayerRouter(const std::string& path, std::chrono::milliseconds timeout);
  std::vector<v1::LayerRouterInfo> ListLayerRouters() const;
  absl::Status RemoveLayerRouter(const std::string& name, std::chrono::milliseconds timeout);

 private:
  struct Sequence {
    uint64_t id = 0;
    GenerationSpec spec;
    std::shared_ptr<RequestHandle> handle;
    int worker = -1;                // rank in the current shard map
    std::vector<int32_t> generated;  // tokens streamed to the client so far
    bool started = false;            // its worker holds its KV cache
    int resumes = 0;
    std::chrono::steady_clock::time_point arrival, last_token_time;
  };
  // A registration slot; its index is the worker id the worker heartbeats with.
  struct WorkerInfo {
    std::string address;
    bool alive = false;
    std::chrono::steady_clock::time_point last_heartbeat;
    std::shared_ptr<v1::Worker::Stub> stub;
  };
  // What a failed step tells about the workers.
  struct StepOutcome {
    absl::Status status;                                    // the first failure
    std::vector<std::pair<int, std::string>> unreachable;  // rank, and how its call failed
  };

  // A task expert map the cluster serves. With placement.task_maps_at_home its merged experts live on
  // one worker, its home (map index modulo the live workers), which also gets a replica of every
  // original expert the map keeps, and its requests run there: a task's tokens then stay on their worker.
  struct LoadedMap {
    ExpertMap map;  // without weights (the workers read those)
    std::string path;
    bool installed = false;  // part of the current shard map
    int home_rank = -1;  // -1: merged experts spread, requests go anywhere
    int64_t requests = 0, completion_tokens = 0, all2all_bytes = 0;
  };

  // A Dr.LLM layer router set the workers hold; requests name it in GenerationSpec.layer_router.
  struct LoadedLayerRouter {
    std::string name, path;
    std::vector<std::string> tasks;
    double skip_threshold = 0.5;
    bool installed = false;
    int64_t requests = 0, completion_tokens = 0, layers_executed = 0;
  };

  explicit Coordinator(const CoordinatorOptions& options, ModelConfig config, ModelIdentity identity);
  // The installed map named `name`; null for "" (the full model) or an unknown name.
  LoadedMap* FindMap(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  v1::ExpertMapInfo MapInfo(const LoadedMap& m) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Adds every loaded map's merged experts (and home replicas) to a placement of the checkpoint's experts.
  void PlaceExpertMaps(ShardMap* map) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  LoadedLayerRouter* FindLayerRouter(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  v1::LayerRouterInfo LayerRouterInfo(const LoadedLayerRouter& r) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Router admin plumbing shared by expert maps and layer routers. Waits until `installed` says the
  // artifact is in (true) or was dropped because a worker refused it (false), or the timeout passes.
  absl::StatusOr<bool> AwaitInstalled(const std::function<std::optional<bool>()>& installed,
                                      std::chrono::milliseconds timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Asks for a re-placement and waits until the workers hold a shard map newer than the current one.
  absl::Status AwaitNewShardMap(const std::string& what, std::chrono::milliseconds timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  // Places the experts on the live workers under a new epoch, loads the shards, and restarts every
  // running sequence on the new map. Retries without workers that fail to load; UNAVAILABLE when no
  // worker is left, or (fixed_membership) once any worker has died.
  absl::Status Reconfigure();
  void EngineLoop();
  StepOutcome RunStep();
  // Refreshes running_tasks_ and running_layer_routers_ from running_ (engine loop thread).
  void CountRunningUsers() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // A running request is done (finished or cancelled): its map and router are free from now on. Called
  // before its client can see it done, so that a Remove right after succeeds.
  void ReleaseUsers(const GenerationSpec& spec) ABSL_LOCKS_EXCLUDED(mutex_);
  void MarkDead(int slot, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void FailAll(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const CoordinatorOptions options_;
  const ModelConfig config_;
  const ModelIdentity identity_;
  std::unique_ptr<ClusterMetrics> metrics_;

  mutable absl::Mutex mutex_;
  std::vector<WorkerInfo> workers_ ABSL_GUARDED_BY(mutex_);
  bool membership_changed_ ABSL_GUARDED_BY(mutex_) = false;  // re-place before the next step
  ShardMap shard_map_ ABSL_GUARDED_BY(mutex_);
  std::vector<int> rank_slot_ ABSL_GUARDED_BY(mutex_);  // the shard map's rank -> registration slot
  bool ready_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Status membership_lost_ ABSL_GUARDED_BY(mutex_);  // fixed_membership only: why the cluster cannot serve
  std::deque<Sequence> queue_ ABSL_GUARDED_BY(mutex_);
  std::vector<LoadedMap> expert_maps_ ABSL_GUARDED_BY(mutex_);  // in install order (fixes merged expert ids)
  std::string map_refusal_ ABSL_GUARDED_BY(mutex_);  // why workers refused the maps not yet installed
  std::vector<LoadedLayerRouter> layer_routers_ ABSL_GUARDED_BY(mutex_);
  // Running requests per task expert map and per layer router, as of the engine loop's last admission
  // (the Remove calls refuse while one is in use).
  std::map<std::string, int64_t> running_tasks_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, int64_t> running_layer_routers_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_sequence_id_ ABSL_GUARDED_BY(mutex_) = 1;

  // Owned by the engine loop thread only.
  std::map<uint64_t, Sequence> running_;
  std::vector<std::vector<uint64_t>> release_;  // per rank, sent with the next step
  uint64_t step_id_ = 0;
  // When the last step's results came in (moe_engine_step_gap_seconds); reset by the next admission.
  std::optional<std::chrono::steady_clock::time_point> results_in_;
  BatchAdmission admission_;
  std::thread engine_thread_;
};

}  // namespace moe

#endif  // MOE_COORDINATOR_COORDINATOR_H_
