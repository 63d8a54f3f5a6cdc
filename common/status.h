// Small helpers around absl::Status that the Debian Abseil lacks.
#ifndef MOE_COMMON_STATUS_H_
#define MOE_COMMON_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MOE_STATUS_CONCAT_INNER(a, b) a##b
#define MOE_STATUS_CONCAT(a, b) MOE_STATUS_CONCAT_INNER(a, b)

// Evaluates `expr` (an absl::Status); returns it from the enclosing function if it is not OK.
#define MOE_RETURN_IF_ERROR(expr)                 \
  do {                                            \
    ::absl::Status moe_status_ = (expr);          \
    if (!moe_status_.ok()) return moe_status_;    \
  } while (0)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, else moves the value into `lhs`
// (which may be a declaration such as `auto x`).
#define MOE_ASSIGN_OR_RETURN(lhs, rexpr) \
  MOE_ASSIGN_OR_RETURN_IMPL(MOE_STATUS_CONCAT(moe_statusor_, __LINE__), lhs, rexpr)
#define MOE_ASSIGN_OR_RETURN_IMPL(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                              \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // MOE_COMMON_STATUS_H_
