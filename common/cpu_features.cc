#include "common/cpu_features.h"

#include <cstdlib>
#include <string>

namespace moe {

std::string_view SimdLevelName(SimdLevel level) {
  switch (level) {
    case SimdLevel::kPortable: return "portable";
    case SimdLevel::kAvx2: return "avx2";
    case SimdLevel::kAvx512: return "avx512";
  }
  return "unknown";
}

bool CpuSupports(SimdLevel level) {
  __builtin_cpu_init();
  switch (level) {
    case SimdLevel::kPortable: return true;
    case SimdLevel::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case SimdLevel::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  }
  return false;
}

std::vector<SimdLevel> SupportedSimdLevels() {
  std::vector<SimdLevel> levels;
  for (SimdLevel l : {SimdLevel::kPortable, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    if (CpuSupports(l)) levels.push_back(l);
  }
  return levels;
}

SimdLevel BestSimdLevel() {
  static const SimdLevel best = [] {
    std::vector<SimdLevel> levels = SupportedSimdLevels();
    SimdLevel result = levels.back();
    if (const char* requested = std::getenv("MOE_SIMD")) {
      for (SimdLevel l : levels) {
        if (SimdLevelName(l) == requested) result = l;
      }
    }
    return result;
  }();
  return best;
}

}  // namespace moe
