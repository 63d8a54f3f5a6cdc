// The one place where gRPC statuses meet absl::Status (codes map 1:1), and where "retryable" is decided.
#ifndef MOE_PROTO_GRPC_UTIL_H_
#define MOE_PROTO_GRPC_UTIL_H_

#include <chrono>
#include <string>

#include "absl/status/status.h"
#include "grpcpp/grpcpp.h"

namespace moe {

inline grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

inline absl::Status FromGrpcStatus(const grpc::Status& s, const std::string& context = "") {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      context.empty() ? s.error_message() : context + ": " + s.error_message());
}

// Transient failures worth retrying against the same peer.
inline bool IsRetryable(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kResourceExhausted;
}

inline std::chrono::system_clock::time_point DeadlineAfter(std::chrono::milliseconds ms) {
  return std::chrono::system_clock::now() + ms;
}

}  // namespace moe

#endif  // MOE_PROTO_GRPC_UTIL_H_
