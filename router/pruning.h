// The offline pruning methods behind moe-prune, as pure functions over one MoE layer's statistics:
// UNCURL (router-logit affinity, spectral clustering into E/p groups, neuron alignment by weight
// matching, usage-weighted merging) and the frequency baseline (keep the E/p most used experts).
#ifndef MOE_ROUTER_PRUNING_H_
#define MOE_ROUTER_PRUNING_H_

#include <cstdint>
#include <vector>

#include "checkpoint/model_config.h"
#include "router/expert_map.h"

namespace moe {

// Router statistics of one MoE layer over a task's tokens.
struct LayerRouterStats {
  int64_t num_experts = 0;
  std::vector<float> logits;   // [tokens, num_experts] router logits
  std::vector<int64_t> usage;  // [num_experts] times each expert was in a token's top-k
  int64_t num_tokens() const { return num_experts ? static_cast<int64_t>(logits.size()) / num_experts : 0; }
};

// The distinct experts a token runs in `layer.layer` under the map layer's slot routing, averaged over
// the stats' tokens: the serving code's own routing (engine/expert_dispatch.h ComputeRouting) on the
// task's router logits, where top-k slots that share a target become one expert. 0 without tokens.
// REQUIRES: layer.slot_to_expert has stats.num_experts entries, at least top_k of them live.
double MeanExpertsPerToken(const LayerRouterStats& stats, const LayerExpertMap& layer, const ModelConfig& config);

// A[i][j] = (cos(Z_i, Z_j) + 1) / 2 where Z_i is expert i's column of router logits; [E * E], row-major.
// A column of zeros has cosine 0 with everything (affinity 1/2) and 1 with itself.
std::vector<double> RouterAffinity(const LayerRouterStats& stats);

// Eigen-decomposition of a symmetric n x n matrix (cyclic Jacobi): eigenvalues descending, and
// eigenvectors as the matching columns of `vectors` [n * n], row-major.
void SymmetricEigen(std::vector<double> matrix, int64_t n, std::vector<double>* values, std::vector<double>* vectors);

// Spectral clustering (normalized affinity D^-1/2 A D^-1/2, its top `groups` eigenvectors, rows
// normalized, k-means with seeded k-means++ restarts). Returns each expert's group in [0, groups), groups
// numbered in order of their smallest member; no group is empty. REQUIRES: 1 <= groups <= n.
std::vector<int32_t> SpectralClusters(const std::vector<double>& affinity, int64_t n, int64_t groups);

// Minimum-cost perfect assignment of an n x n cost matrix (Hungarian algorithm, O(n^3)): result[row] = col.
std::vector<int32_t> MinCostAssignment(const std::vector<double>& cost, int64_t n);

// Weight matching: perm[j] = the neuron of `member` aligned with neuron j of `reference`, maximizing
// the summed dot products of the neurons' (gate row, up row, down column) vectors.
std::vector<int32_t> MatchNeurons(const ExpertFfn& reference, const ExpertFfn& member);

// `member` with its neurons reordered by `perm` (neuron j of the result is neuron perm[j] of member).
ExpertFfn PermuteNeurons(const ExpertFfn& member, const std::vector<int32_t>& perm);

// Usage-weighted average sum_i f_i W_i / sum_i f_i of experts already aligned to one reference (equal
// weights when every f_i is 0). REQUIRES: experts non-empty, same shapes, usage.size() == experts.size().
ExpertFfn WeightedAverage(const std::vector<ExpertFfn>& experts, const std::vector<int64_t>& usage);

// The `keep` most used experts, ascending ids (ties: lower id first).
std::vector<int32_t> MostUsedExperts(const std::vector<int64_t>& usage, int64_t keep);

// One layer of an UNCURL map: experts grouped by SpectralClusters into `groups` groups (E / p); a
// group of one keeps its original expert, a larger group becomes a merged expert (members aligned to the
// most used one, then usage-weighted). read_expert(e) supplies expert e's weights.
absl::StatusOr<LayerExpertMap> BuildUncurlLayer(int64_t layer, const LayerRouterStats& stats, int64_t groups,
                                                const std::function<absl::StatusOr<ExpertFfn>(int32_t)>& read_expert);

// One layer of a frequency-pruning map: the `keep` (E / p) most used experts kept, the rest dropped.
LayerExpertMap BuildFrequencyLayer(int64_t layer, const LayerRouterStats& stats, int64_t keep);

}  // namespace moe

#endif  // MOE_ROUTER_PRUNING_H_
