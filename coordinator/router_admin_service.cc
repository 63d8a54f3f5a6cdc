#include "coordinator/router_admin_service.h"

#include "proto/grpc_util.h"

namespace moe {

grpc::Status RouterAdminService::LoadExpertMap(grpc::ServerContext*, const v1::LoadExpertMapRequest* request,
                                               v1::ExpertMapInfo* response) {
  if (request->path().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "LoadExpertMap: empty path");
  auto info = coordinator_->LoadExpertMap(request->path(), timeout_);
  if (!info.ok()) return ToGrpcStatus(info.status());
  *response = std::move(*info);
  return grpc::Status::OK;
}

grpc::Status RouterAdminService::ListExpertMaps(grpc::ServerContext*, const v1::ListExpertMapsRequest*,
                                                v1::ListExpertMapsResponse* response) {
  for (v1::ExpertMapInfo& info : coordinator_->ListExpertMaps()) *response->add_maps() = std::move(info);
  return grpc::Status::OK;
}

grpc::Status RouterAdminService::RemoveExpertMap(grpc::ServerContext*, const v1::RemoveExpertMapRequest* request,
                                                 v1::RemoveExpertMapResponse*) {
  return ToGrpcStatus(coordinator_->RemoveExpertMap(request->name(), timeout_));
}

grpc::Status RouterAdminService::LoadLayerRouter(grpc::ServerContext*, const v1::LoadLayerRouterRequest* request,
                                                 v1::LayerRouterInfo* response) {
  if (request->path().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "LoadLayerRouter: empty path");
  auto info = coordinator_->LoadLayerRouter(request->path(), timeout_);
  if (!info.ok()) return ToGrpcStatus(info.status());
  *response = std::move(*info);
  return grpc::Status::OK;
}

grpc::Status RouterAdminService::ListLayerRouters(grpc::ServerContext*, const v1::ListLayerRoutersRequest*,
                                                  v1::ListLayerRoutersResponse* response) {
  for (v1::LayerRouterInfo& info : coordinator_->ListLayerRouters()) *response->add_routers() = std::move(info);
  return grpc::Status::OK;
}

grpc::Status RouterAdminService::RemoveLayerRouter(grpc::ServerContext*, const v1::RemoveLayerRouterRequest* request,
                                                   v1::RemoveLayerRouterResponse*) {
  return ToGrpcStatus(coordinator_->RemoveLayerRouter(request->name(), timeout_));
}

}  // namespace moe
