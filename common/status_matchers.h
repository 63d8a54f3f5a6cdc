// GoogleTest matchers for absl::Status / absl::StatusOr (test-only).
#ifndef MOE_COMMON_STATUS_MATCHERS_H_
#define MOE_COMMON_STATUS_MATCHERS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/status.h"
#include "gmock/gmock.h"

namespace moe::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) { return s.status(); }

MATCHER(IsOk, "is OK") {
  const absl::Status& s = GetStatus(arg);
  if (!s.ok()) *result_listener << "status: " << s.ToString();
  return s.ok();
}

// Matches a status with `code` whose message contains `substring`.
MATCHER_P2(StatusIs, code, substring, "") {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status: " << s.ToString();
  return s.code() == code && s.message().find(std::string(substring)) != std::string::npos;
}

}  // namespace moe::testing

#define MOE_ASSERT_OK_AND_ASSIGN(lhs, rexpr)                                  \
  MOE_ASSERT_OK_AND_ASSIGN_IMPL(MOE_STATUS_CONCAT(moe_assert_so_, __LINE__), lhs, rexpr)
#define MOE_ASSERT_OK_AND_ASSIGN_IMPL(so, lhs, rexpr) \
  auto so = (rexpr);                                  \
  ASSERT_TRUE(so.ok()) << so.status().ToString();     \
  lhs = std::move(so).value()

#endif  // MOE_COMMON_STATUS_MATCHERS_H_
