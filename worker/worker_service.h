// The Worker gRPC service: loads its shard, runs engine steps for the sequences the coordinator assigns
// to it, and takes part in the expert-parallel all-to-all with its peers.
#ifndef MOE_WORKER_WORKER_SERVICE_H_
#define MOE_WORKER_WORKER_SERVICE_H_

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "checkpoint/model_source.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "exchange/grpc_exchange.h"
#include "moe/v1/cluster.grpc.pb.h"
#include "router/expert_map.h"
#include "router/layer_router.h"
#include "worker/distributed_dispatcher.h"

namespace moe {

// proto <-> ShardMap, validated against the model (INVALID_ARGUMENT naming what is wrong). Each MoE
// layer places num_experts + merged_experts[layer] experts (task maps' merged experts; empty = none).
absl::StatusOr<ShardMap> ShardMapFromProto(const v1::ShardMapProto& p, const ModelConfig& config,
                                           const std::vector<int64_t>& merged_experts = {});
void ShardMapToProto(const ShardMap& m, v1::ShardMapProto* p);

// Exchange is served over raw bytes (see GrpcExchange::Deliver); the other methods are synchronous.
class WorkerService final : public v1::Worker::WithRawCallbackMethod_Exchange<v1::Worker::Service> {
 public:
  // Builds the data plane for one shard map, given this worker's rank in it and the communicator id the
  // coordinator handed out for the map's epoch (empty when the data plane needs none). Unset: gRPC
  // among the map's worker addresses (membership may change freely). An MPI data plane has fixed
  // membership and refuses (FAILED_PRECONDITION) a map that does not match its communicator.
  using ExchangeFactory = std::function<absl::StatusOr<std::shared_ptr<moe::Exchange>>(
      int rank, const ShardMap& map, const std::string& communicator_id)>;
  struct Options {
    std::string model_dir;
    int threads = 0;
    std::chrono::milliseconds exchange_timeout{10000};
    ExchangeFactory make_exchange;
  };
  explicit WorkerService(Options options);

  grpc::Status LoadShard(grpc::ServerContext*, const v1::LoadShardRequest*, v1::LoadShardResponse*) override;
  // Releases peers' calls still waiting on this worker's data plane (same-host blocks not yet read), so
  // that the server can shut down. Call before shutting the server down.
  void StopDataPlane();
  grpc::Status Step(grpc::ServerContext*, const v1::StepRequest*, v1::StepResponse*) override;
  grpc::ServerUnaryReactor* Exchange(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;

 private:
  struct Sequence {
    std::unique_ptr<KvCache> cache;
    Sampler sampler;
    const SlotRouting* slot_routing = nullptr;  // its task expert map (owned by the shard); null = full model
    std::unique_ptr<LayerRoutingPolicy> layer_policy;  // decides its layer path at prefill; null = none
  };
  // Everything built for one shard map; replaced as a whole when a new map arrives.
  struct Shard {
    int worker_id = 0;
    ShardMap map;
    std::shared_ptr<moe::Exchange> exchange;
    std::unique_ptr<DistributedExpertDispatcher> dispatcher;
    std::unique_ptr<Model> model;
    std::map<std::string, SlotRouting> expert_maps;  // by name, resolved to this shard's expert tables
    std::map<std::string, LayerRouter> layer_routers;  // by name
  };

  Options options_;
  std::unique_ptr<ThreadPool> pool_;
  std::shared_ptr<const ModelSource> source_;
  std::optional<ModelIdentity> identity_;  // of source_, for checking task expert maps
  absl::Mutex step_mutex_;  // one Step or LoadShard at a time
  std::unique_ptr<Shard> shard_ ABSL_GUARDED_BY(step_mutex_);
  std::map<uint64_t, Sequence> sequences_ ABSL_GUARDED_BY(step_mutex_);
  // The gRPC data plane, if that is the backend. Read by Exchange handlers, which never take
  // step_mutex_ (a Step blocks inside the all-to-all).
  absl::Mutex exchange_mutex_;
  std::shared_ptr<GrpcExchange> exchange_ ABSL_GUARDED_BY(exchange_mutex_);
};

}  // namespace moe

#endif  // MOE_WORKER_WORKER_SERVICE_H_
