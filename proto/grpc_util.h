// The one place where gRPC statuses meet absl::Status (codes map 1:1), and where "retryable" is decided.
#ifndef MOE_PROTO_GRPC_UTIL_H_
#define MOE_PROTO_GRPC_UTIL_H_

#include <unistd.h>

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

// The host others should dial to reach a server bound to `bound_host`: the same host, except that a
// wildcard bind (every interface) is reached through this machine's name.
inline std::string DialableHost(const std::string& bound_host) {
  if (bound_host != "0.0.0.0" && bound_host != "[::]" && bound_host != "::") return bound_host;
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "127.0.0.1";
  return name;
}

}  // namespace moe

#endif  // MOE_PROTO_GRPC_UTIL_H_
