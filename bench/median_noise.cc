#include "bench/median_noise.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "bench/load_client.h"
#include "common/splitmix.h"

namespace moe::bench {
namespace {

// Each figure's median over the runs of the given starts.
std::vector<double> Medians(const LiveSeries& s, const std::vector<size_t>& starts, size_t figures) {
  std::vector<double> medians(figures);
  std::vector<double> values;
  for (size_t f = 0; f < figures; ++f) {
    values.clear();
    for (size_t start : starts) {
      for (const std::vector<double>& run : s.by_start[start]) values.push_back(run[f]);
    }
    medians[f] = Quantile(values, 0.5);
  }
  return medians;
}

}  // namespace

std::optional<MedianNoise> BootstrapMedianNoise(const std::vector<LiveSeries>& setups, int draws, uint64_t seed) {
  if (setups.empty() || draws < 1) return std::nullopt;
  const size_t figures = setups[0].by_start.empty() || setups[0].by_start[0].empty() ? 0 : setups[0].by_start[0][0].size();
  if (figures == 0) return std::nullopt;
  std::map<int, size_t> starts_of_group;
  for (const LiveSeries& s : setups) {
    if (s.by_start.size() < 2) return std::nullopt;
    for (const auto& start : s.by_start) {
      if (start.empty()) return std::nullopt;
      for (const std::vector<double>& run : start) {
        if (run.size() != figures) return std::nullopt;
      }
    }
    const auto [it, added] = starts_of_group.emplace(s.group, s.by_start.size());
    if (!added && it->second != s.by_start.size()) return std::nullopt;
  }
  std::vector<std::vector<double>> observed;
  for (const LiveSeries& s : setups) {
    std::vector<size_t> all(s.by_start.size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = i;
    observed.push_back(Medians(s, all, figures));
  }
  MedianNoise noise;
  noise.figures = setups.size() * figures;
  SplitMix64 rng(seed);
  std::vector<double> median_by_draw, misses;
  std::map<int, std::vector<size_t>> drawn;  // by group: the resampled starts
  for (int d = 0; d < draws; ++d) {
    for (const auto& [group, starts] : starts_of_group) {
      std::vector<size_t>& picks = drawn[group];
      picks.resize(starts);
      for (size_t& p : picks) p = static_cast<size_t>(rng.Next() % starts);
    }
    misses.clear();
    for (size_t i = 0; i < setups.size(); ++i) {
      const std::vector<double> resampled = Medians(setups[i], drawn[setups[i].group], figures);
      for (size_t f = 0; f < figures; ++f) {
        misses.push_back(observed[i][f] != 0 ? std::abs(resampled[f] / observed[i][f] - 1) : 0);
      }
    }
    median_by_draw.push_back(Quantile(misses, 0.5));
    noise.worst_by_draw.push_back(*std::max_element(misses.begin(), misses.end()));
  }
  noise.median_miss = Quantile(median_by_draw, 0.5);
  noise.worst_miss = Quantile(noise.worst_by_draw, 0.5);
  noise.worst_miss_p90 = Quantile(noise.worst_by_draw, 0.9);
  return noise;
}

}  // namespace moe::bench
