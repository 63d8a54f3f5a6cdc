// Command-line helpers shared by every binary's main().
#ifndef MOE_COMMON_FLAGS_H_
#define MOE_COMMON_FLAGS_H_

#include <string>
#include <vector>

#include "absl/flags/parse.h"

namespace moe {

// Rewrites "--max-tokens=5" / "--max-tokens 5" to the Abseil spelling "--max_tokens" so users may write
// flags with dashes or underscores. Returns argv copies to hand to absl::ParseCommandLine; `storage`
// owns the strings and must outlive the parse.
inline std::vector<char*> NormalizeFlagDashes(int argc, char** argv, std::vector<std::string>* storage) {
  storage->assign(argv, argv + argc);
  for (size_t i = 1; i < storage->size(); ++i) {
    std::string& a = (*storage)[i];
    if (a == "--") break;
    if (a.rfind("--", 0) != 0) continue;
    const size_t end = std::min(a.find('='), a.size());
    for (size_t j = 2; j < end; ++j) {
      if (a[j] == '-') a[j] = '_';
    }
  }
  std::vector<char*> out;
  for (std::string& s : *storage) out.push_back(s.data());
  return out;
}

// absl::ParseCommandLine with dash-spelled flags accepted. Call once, first thing in main().
inline void ParseFlags(int argc, char** argv) {
  static std::vector<std::string> storage;  // argv strings must outlive the flags
  std::vector<char*> args = NormalizeFlagDashes(argc, argv, &storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
}

}  // namespace moe

#endif  // MOE_COMMON_FLAGS_H_
