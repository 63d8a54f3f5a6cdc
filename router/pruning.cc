#include "router/pruning.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/splitmix.h"
#include "common/status.h"
#include "engine/expert_dispatch.h"

namespace moe {

double MeanExpertsPerToken(const LayerRouterStats& stats, const LayerExpertMap& layer, const ModelConfig& config) {
  const int64_t tokens = stats.num_tokens();
  if (tokens == 0) return 0;
  const std::vector<const int32_t*> targets(static_cast<size_t>(tokens), layer.slot_to_expert.data());
  const RoutingDecision routing = ComputeRouting(stats.logits.data(), tokens, config, targets);
  const int64_t used = std::count_if(routing.experts.begin(), routing.experts.end(), [](int32_t e) { return e != kNoExpert; });
  return static_cast<double>(used) / static_cast<double>(tokens);
}

std::vector<double> RouterAffinity(const LayerRouterStats& stats) {
  const int64_t n = stats.num_experts, tokens = stats.num_tokens();
  std::vector<double> gram(static_cast<size_t>(n * n), 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* z = stats.logits.data() + t * n;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = i; j < n; ++j) gram[i * n + j] += static_cast<double>(z[i]) * z[j];
    }
  }
  std::vector<double> a(gram.size());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i; j < n; ++j) {
      const double norms = std::sqrt(gram[i * n + i] * gram[j * n + j]);
      const double cosine = i == j ? 1.0 : (norms > 0 ? gram[i * n + j] / norms : 0.0);
      a[i * n + j] = a[j * n + i] = (cosine + 1.0) / 2.0;
    }
  }
  return a;
}

void SymmetricEigen(std::vector<double> m, int64_t n, std::vector<double>* values, std::vector<double>* vectors) {
  std::vector<double> v(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) v[i * n + i] = 1.0;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = i + 1; j < n; ++j) off += m[i * n + j] * m[i * n + j];
    }
    if (off < 1e-24) break;
    for (int64_t p = 0; p < n; ++p) {
      for (int64_t q = p + 1; q < n; ++q) {
        const double apq = m[p * n + q];
        if (std::abs(apq) < 1e-300) continue;
        const double theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
        for (int64_t k = 0; k < n; ++k) {  // columns p, q
          const double mkp = m[k * n + p], mkq = m[k * n + q];
          m[k * n + p] = c * mkp - s * mkq;
          m[k * n + q] = s * mkp + c * mkq;
        }
        for (int64_t k = 0; k < n; ++k) {  // rows p, q
          const double mpk = m[p * n + k], mqk = m[q * n + k];
          m[p * n + k] = c * mpk - s * mqk;
          m[q * n + k] = s * mpk + c * mqk;
        }
        for (int64_t k = 0; k < n; ++k) {
          const double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return m[a * n + a] > m[b * n + b]; });
  values->resize(static_cast<size_t>(n));
  vectors->assign(static_cast<size_t>(n * n), 0.0);
  for (int64_t col = 0; col < n; ++col) {
    (*values)[col] = m[order[col] * n + order[col]];
    for (int64_t row = 0; row < n; ++row) (*vectors)[row * n + col] = v[row * n + order[col]];
  }
}

namespace {

double SquaredDistance(const double* a, const double* b, int64_t d) {
  double s = 0.0;
  for (int64_t i = 0; i < d; ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return s;
}

// One seeded k-means++ run on n points of dimension d; returns the labels and sets *inertia.
std::vector<int32_t> KMeans(const std::vector<double>& points, int64_t n, int64_t d, int64_t k, uint64_t seed,
                            double* inertia) {
  SplitMix64 rng(seed);
  std::vector<double> centers(static_cast<size_t>(k * d));
  std::vector<double> nearest(static_cast<size_t>(n), std::numeric_limits<double>::infinity());
  int64_t first = static_cast<int64_t>(rng.Next() % static_cast<uint64_t>(n));
  std::copy_n(points.begin() + first * d, d, centers.begin());
  for (int64_t c = 1; c < k; ++c) {
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      nearest[i] = std::min(nearest[i], SquaredDistance(&points[i * d], &centers[(c - 1) * d], d));
      total += nearest[i];
    }
    int64_t pick = 0;
    if (total > 0) {
      double r = rng.NextUniform() * total;
      while (pick < n - 1 && (r -= nearest[pick]) >= 0) ++pick;
    } else {
      pick = c % n;
    }
    std::copy_n(points.begin() + pick * d, d, centers.begin() + c * d);
  }
  std::vector<int32_t> label(static_cast<size_t>(n), -1);
  for (int iter = 0; iter < 100; ++iter) {
    bool changed = false;
    for (int64_t i = 0; i < n; ++i) {
      int32_t best = 0;
      double best_d = std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < k; ++c) {
        const double dist = SquaredDistance(&points[i * d], &centers[c * d], d);
        if (dist < best_d) best_d = dist, best = static_cast<int32_t>(c);
      }
      changed |= label[i] != best;
      label[i] = best;
    }
    // No empty cluster: an empty one takes the point farthest from its center among clusters of 2+.
    for (int64_t c = 0; c < k; ++c) {
      std::vector<int64_t> size(static_cast<size_t>(k), 0);
      for (int32_t l : label) ++size[l];
      if (size[c] > 0) continue;
      int64_t far = -1;
      double far_d = -1.0;
      for (int64_t i = 0; i < n; ++i) {
        if (size[label[i]] < 2) continue;
        const double dist = SquaredDistance(&points[i * d], &centers[label[i] * d], d);
        if (dist > far_d) far_d = dist, far = i;
      }
      label[far] = static_cast<int32_t>(c);
      changed = true;
    }
    std::fill(centers.begin(), centers.end(), 0.0);
    std::vector<int64_t> size(static_cast<size_t>(k), 0);
    for (int64_t i = 0; i < n; ++i) {
      ++size[label[i]];
      for (int64_t j = 0; j < d; ++j) centers[label[i] * d + j] += points[i * d + j];
    }
    for (int64_t c = 0; c < k; ++c) {
      for (int64_t j = 0; j < d; ++j) centers[c * d + j] /= static_cast<double>(size[c]);
    }
    if (!changed) break;
  }
  *inertia = 0.0;
  for (int64_t i = 0; i < n; ++i) *inertia += SquaredDistance(&points[i * d], &centers[label[i] * d], d);
  return label;
}

}  // namespace

std::vector<int32_t> SpectralClusters(const std::vector<double>& affinity, int64_t n, int64_t groups) {
  std::vector<double> degree(static_cast<size_t>(n), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) degree[i] += affinity[i * n + j];
  }
  std::vector<double> normalized(affinity.size());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) normalized[i * n + j] = affinity[i * n + j] / std::sqrt(degree[i] * degree[j]);
  }
  std::vector<double> values, vectors;
  SymmetricEigen(normalized, n, &values, &vectors);
  // Rows of the top `groups` eigenvectors, each scaled to unit length (Ng, Jordan and Weiss).
  std::vector<double> points(static_cast<size_t>(n * groups));
  for (int64_t i = 0; i < n; ++i) {
    double norm = 0.0;
    for (int64_t g = 0; g < groups; ++g) norm += vectors[i * n + g] * vectors[i * n + g];
    norm = std::sqrt(norm);
    for (int64_t g = 0; g < groups; ++g) points[i * groups + g] = norm > 0 ? vectors[i * n + g] / norm : 0.0;
  }
  std::vector<int32_t> best;
  double best_inertia = std::numeric_limits<double>::infinity();
  for (uint64_t restart = 0; restart < 16; ++restart) {
    double inertia = 0.0;
    std::vector<int32_t> label = KMeans(points, n, groups, groups, 0x5eed + restart, &inertia);
    if (inertia < best_inertia - 1e-12) best_inertia = inertia, best = std::move(label);
  }
  // Number groups by their smallest member.
  std::vector<int32_t> rename(static_cast<size_t>(groups), -1), out(static_cast<size_t>(n));
  int32_t next = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (rename[best[i]] < 0) rename[best[i]] = next++;
    out[i] = rename[best[i]];
  }
  return out;
}

std::vector<int32_t> MinCostAssignment(const std::vector<double>& cost, int64_t n) {
  // Hungarian algorithm with potentials (rows 1..n, columns 1..n; column 0 is the virtual start).
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> u(static_cast<size_t>(n + 1), 0.0), v(static_cast<size_t>(n + 1), 0.0);
  std::vector<int64_t> match(static_cast<size_t>(n + 1), 0), way(static_cast<size_t>(n + 1), 0);
  for (int64_t row = 1; row <= n; ++row) {
    match[0] = row;
    int64_t col0 = 0;
    std::vector<double> minv(static_cast<size_t>(n + 1), inf);
    std::vector<bool> used(static_cast<size_t>(n + 1), false);
    do {
      used[col0] = true;
      const int64_t r = match[col0];
      double delta = inf;
      int64_t col1 = 0;
      for (int64_t col = 1; col <= n; ++col) {
        if (used[col]) continue;
        const double reduced = cost[(r - 1) * n + (col - 1)] - u[r] - v[col];
        if (reduced < minv[col]) minv[col] = reduced, way[col] = col0;
        if (minv[col] < delta) delta = minv[col], col1 = col;
      }
      for (int64_t col = 0; col <= n; ++col) {
        if (used[col]) {
          u[match[col]] += delta;
          v[col] -= delta;
        } else {
          minv[col] -= delta;
        }
      }
      col0 = col1;
    } while (match[col0] != 0);
    do {
      const int64_t col1 = way[col0];
      match[col0] = match[col1];
      col0 = col1;
    } while (col0 != 0);
  }
  std::vector<int32_t> assignment(static_cast<size_t>(n));
  for (int64_t col = 1; col <= n; ++col) assignment[match[col] - 1] = static_cast<int32_t>(col - 1);
  return assignment;
}

std::vector<int32_t> MatchNeurons(const ExpertFfn& reference, const ExpertFfn& member) {
  const int64_t f = reference.ffn, h = reference.hidden;
  std::vector<double> cost(static_cast<size_t>(f * f));
  for (int64_t i = 0; i < f; ++i) {
    for (int64_t j = 0; j < f; ++j) {
      double dot = 0.0;
      for (int64_t k = 0; k < h; ++k) {
        dot += static_cast<double>(reference.gate[i * h + k]) * member.gate[j * h + k] +
               static_cast<double>(reference.up[i * h + k]) * member.up[j * h + k] +
               static_cast<double>(reference.down[k * f + i]) * member.down[k * f + j];
      }
      cost[i * f + j] = -dot;
    }
  }
  return MinCostAssignment(cost, f);
}

ExpertFfn PermuteNeurons(const ExpertFfn& member, const std::vector<int32_t>& perm) {
  const int64_t f = member.ffn, h = member.hidden;
  ExpertFfn out{f, h, std::vector<float>(member.gate.size()), std::vector<float>(member.up.size()),
                std::vector<float>(member.down.size())};
  for (int64_t j = 0; j < f; ++j) {
    std::copy_n(member.gate.begin() + perm[j] * h, h, out.gate.begin() + j * h);
    std::copy_n(member.up.begin() + perm[j] * h, h, out.up.begin() + j * h);
    for (int64_t k = 0; k < h; ++k) out.down[k * f + j] = member.down[k * f + perm[j]];
  }
  return out;
}

ExpertFfn WeightedAverage(const std::vector<ExpertFfn>& experts, const std::vector<int64_t>& usage) {
  const int64_t total = std::accumulate(usage.begin(), usage.end(), int64_t{0});
  ExpertFfn out{experts[0].ffn, experts[0].hidden, std::vector<float>(experts[0].gate.size(), 0.0f),
                std::vector<float>(experts[0].up.size(), 0.0f), std::vector<float>(experts[0].down.size(), 0.0f)};
  for (size_t i = 0; i < experts.size(); ++i) {
    const double w = total > 0 ? static_cast<double>(usage[i]) / static_cast<double>(total) : 1.0 / static_cast<double>(experts.size());
    const float wf = static_cast<float>(w);
    for (size_t k = 0; k < out.gate.size(); ++k) out.gate[k] += wf * experts[i].gate[k];
    for (size_t k = 0; k < out.up.size(); ++k) out.up[k] += wf * experts[i].up[k];
    for (size_t k = 0; k < out.down.size(); ++k) out.down[k] += wf * experts[i].down[k];
  }
  return out;
}

std::vector<int32_t> MostUsedExperts(const std::vector<int64_t>& usage, int64_t keep) {
  std::vector<int32_t> order(usage.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return usage[a] > usage[b]; });
  order.resize(static_cast<size_t>(keep));
  std::sort(order.begin(), order.end());
  return order;
}

absl::StatusOr<LayerExpertMap> BuildUncurlLayer(int64_t layer, const LayerRouterStats& stats, int64_t groups,
                                                const std::function<absl::StatusOr<ExpertFfn>(int32_t)>& read_expert) {
  const int64_t n = stats.num_experts;
  const std::vector<int32_t> group_of = SpectralClusters(RouterAffinity(stats), n, groups);
  LayerExpertMap lm;
  lm.layer = layer;
  lm.slot_to_expert.assign(static_cast<size_t>(n), kNoExpert);
  for (int32_t g = 0; g < groups; ++g) {
    std::vector<int32_t> members;
    for (int32_t e = 0; e < n; ++e) {
      if (group_of[e] == g) members.push_back(e);
    }
    if (members.size() == 1) {  // nothing to merge: the slot keeps its own expert
      lm.slot_to_expert[members[0]] = members[0];
      continue;
    }
    // Reference = most used member (ties: lower id), listed first.
    std::stable_sort(members.begin(), members.end(), [&](int32_t a, int32_t b) { return stats.usage[a] > stats.usage[b]; });
    MergedExpert merged;
    std::vector<ExpertFfn> aligned;
    for (int32_t e : members) {
      MOE_ASSIGN_OR_RETURN(ExpertFfn w, read_expert(e));
      aligned.push_back(aligned.empty() ? std::move(w) : PermuteNeurons(w, MatchNeurons(aligned[0], w)));
      merged.members.push_back(e);
      merged.usage.push_back(stats.usage[e]);
    }
    merged.weights = WeightedAverage(aligned, merged.usage);
    const int32_t target = static_cast<int32_t>(n + static_cast<int64_t>(lm.merged.size()));
    for (int32_t e : members) lm.slot_to_expert[e] = target;
    lm.merged.push_back(std::move(merged));
  }
  return lm;
}

LayerExpertMap BuildFrequencyLayer(int64_t layer, const LayerRouterStats& stats, int64_t keep) {
  LayerExpertMap lm;
  lm.layer = layer;
  lm.slot_to_expert.assign(static_cast<size_t>(stats.num_experts), kNoExpert);
  for (int32_t e : MostUsedExperts(stats.usage, keep)) lm.slot_to_expert[e] = e;
  return lm;
}

}  // namespace moe
