// The RouterAdmin gRPC service: loads, lists and removes task expert maps and layer routers on a running cluster
// (a thin layer over Coordinator).
#ifndef MOE_COORDINATOR_ROUTER_ADMIN_SERVICE_H_
#define MOE_COORDINATOR_ROUTER_ADMIN_SERVICE_H_

#include <chrono>

#include "coordinator/coordinator.h"
#include "moe/v1/inference.grpc.pb.h"

namespace moe {

class RouterAdminService final : public v1::RouterAdmin::Service {
 public:
  // `coordinator` must outlive the service. A load or remove waits up to `reconfigure_timeout` for the
  // workers to take the new shard map.
  RouterAdminService(Coordinator* coordinator, std::chrono::milliseconds reconfigure_timeout)
      : coordinator_(coordinator), timeout_(reconfigure_timeout) {}

  grpc::Status LoadExpertMap(grpc::ServerContext*, const v1::LoadExpertMapRequest*, v1::ExpertMapInfo*) override;
  grpc::Status ListExpertMaps(grpc::ServerContext*, const v1::ListExpertMapsRequest*, v1::ListExpertMapsResponse*) override;
  grpc::Status RemoveExpertMap(grpc::ServerContext*, const v1::RemoveExpertMapRequest*, v1::RemoveExpertMapResponse*) override;
  grpc::Status LoadLayerRouter(grpc::ServerContext*, const v1::LoadLayerRouterRequest*, v1::LayerRouterInfo*) override;
  grpc::Status ListLayerRouters(grpc::ServerContext*, const v1::ListLayerRoutersRequest*,
                                v1::ListLayerRoutersResponse*) override;
  grpc::Status RemoveLayerRouter(grpc::ServerContext*, const v1::RemoveLayerRouterRequest*,
                                 v1::RemoveLayerRouterResponse*) override;

 private:
  Coordinator* coordinator_;
  std::chrono::milliseconds timeout_;
};

}  // namespace moe

#endif  // MOE_COORDINATOR_ROUTER_ADMIN_SERVICE_H_
