// Scratch directories for test binaries: one per test binary and process, so that parallel ctest runs
// of different binaries (and of the same binary in different processes) never share files.
#ifndef MOE_COMMON_TEST_DIR_H_
#define MOE_COMMON_TEST_DIR_H_

#include <unistd.h>

#include <filesystem>
#include <string>

namespace moe::testing {

// <temp>/moe_<suite>_<pid>, or that directory's child `name`. Creates and removes nothing.
inline std::filesystem::path ScratchDir(const std::string& suite, const std::string& name = "") {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("moe_" + suite + "_" + std::to_string(::getpid()));
  return name.empty() ? dir : dir / name;
}

}  // namespace moe::testing

#endif  // MOE_COMMON_TEST_DIR_H_
