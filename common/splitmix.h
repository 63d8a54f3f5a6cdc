// splitmix64: the project's one small, fast, seedable random generator (weights of generated
// checkpoints, sampling, simulation streams). The same seed gives the same numbers everywhere.
#ifndef MOE_COMMON_SPLITMIX_H_
#define MOE_COMMON_SPLITMIX_H_

#include <cstdint>

namespace moe {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}

  uint64_t Next() {
    uint64_t z = (state_ += kGamma);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1), 53 random bits.
  double NextUniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  // Puts the stream where it would be after `draws` calls of Next (the state advances by a constant).
  void Skip(uint64_t draws) { state_ += draws * kGamma; }

 private:
  static constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
  uint64_t state_;
};

}  // namespace moe

#endif  // MOE_COMMON_SPLITMIX_H_
