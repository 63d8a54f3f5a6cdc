// One line per event on stderr, prefixed with the program's name: the servers' operational log
// (failures, membership changes). Thread-safe: one write per line.
#ifndef MOE_COMMON_LOG_H_
#define MOE_COMMON_LOG_H_

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"

namespace moe {

// The name every line starts with; set once by main().
inline std::string& LogProgramName() {
  static std::string name = "moe";
  return name;
}

inline void LogLine(absl::string_view message) {
  const std::string line = absl::StrCat(LogProgramName(), ": ", message, "\n");
  std::fwrite(line.data(), 1, line.size(), stderr);
}

// A command's fatal error: logs `message` and returns exit status 1 (`return Fail(...)` in main).
inline int Fail(absl::string_view message) {
  LogLine(message);
  return 1;
}

}  // namespace moe

#endif  // MOE_COMMON_LOG_H_
