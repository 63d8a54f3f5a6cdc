// Which SIMD instruction sets this CPU can run; the kernels dispatch on it at run time.
#ifndef MOE_COMMON_CPU_FEATURES_H_
#define MOE_COMMON_CPU_FEATURES_H_

#include <string_view>
#include <vector>

namespace moe {

enum class SimdLevel {
  kPortable,  // plain C++ (any x86-64)
  kAvx2,      // AVX2 + FMA
  kAvx512,    // AVX-512 F/BW/VL
};

std::string_view SimdLevelName(SimdLevel level);

// True when this CPU (and OS) can execute code compiled for `level`.
bool CpuSupports(SimdLevel level);

// The fastest level this CPU supports, unless the environment variable MOE_SIMD names a lower
// one ("portable", "avx2", "avx512"); an unsupported or unknown request falls back to the best.
SimdLevel BestSimdLevel();

// Every level this CPU can run, slowest first (tests run each).
std::vector<SimdLevel> SupportedSimdLevels();

}  // namespace moe

#endif  // MOE_COMMON_CPU_FEATURES_H_
