// How far the median of a few starts' live runs can sit from what the live cluster would give over
// many: the noise any prediction is compared through. A validation's live figure is the median of
// its runs on a few fresh starts of a cluster, and on this shared machine one start can run 10-50%
// off another; a predictor that knew each figure's true value would still miss those medians by
// their own sampling error. Estimated by a bootstrap over starts: each draw resamples a cluster's
// starts with replacement (the runs of a start stay together, and setups measured on the same starts
// are resampled together) and takes each figure's median again.
#ifndef MOE_BENCH_MEDIAN_NOISE_H_
#define MOE_BENCH_MEDIAN_NOISE_H_

#include <cstdint>
#include <optional>
#include <vector>

namespace moe::bench {

// One setup's live runs: by_start[start][run][figure] (every run the same figures, every start at
// least one run). Setups of one `group` were measured on the same starts (as many of them).
struct LiveSeries {
  int group = 0;
  std::vector<std::vector<std::vector<double>>> by_start;
};

// Over the draws, each draw's misses |resampled median / median - 1| over every setup's figures.
struct MedianNoise {
  double median_miss = 0;  // the median draw's median miss
  double worst_miss = 0;   // the median draw's worst miss
  double worst_miss_p90 = 0;  // the worst miss one draw in ten exceeds
  std::vector<double> worst_by_draw;  // each draw's worst miss, in draw order
  size_t figures = 0;
};

// nullopt when a setup has fewer than two starts (no spread between starts to resample), when the
// setups disagree on the figures or a group on the starts, or when there are no setups or draws.
// The same `seed` gives the same draws.
std::optional<MedianNoise> BootstrapMedianNoise(const std::vector<LiveSeries>& setups, int draws, uint64_t seed);

}  // namespace moe::bench

#endif  // MOE_BENCH_MEDIAN_NOISE_H_
