#include "worker/distributed_dispatcher.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/kernels.h"

namespace moe {
namespace {

// Dispatch record, fixed size per token: int32 n, int32 experts[top_k] (unused: -1), float weights[top_k],
// float hidden[H]. A message is a header (int32 count, int32 flags) followed by `count` records. The
// combine reply is float[count][H] in the same order.
constexpr size_t kHeaderBytes = 8;
constexpr int32_t kWantsRepeatFlag = 1;  // the sender has sequences that run this layer again (pass 1)
struct RecordLayout {
  int64_t top_k, hidden;
  size_t bytes() const { return 4 + 8 * static_cast<size_t>(top_k) + 4 * static_cast<size_t>(hidden); }
};

template <typename T>
void Append(std::string* s, const T* v, size_t n) {
  s->append(reinterpret_cast<const char*>(v), sizeof(T) * n);
}

template <typename T>
T ReadAt(const std::string& s, size_t offset) {
  T v;
  std::memcpy(&v, s.data() + offset, sizeof v);
  return v;
}

}  // namespace

DistributedExpertDispatcher::DistributedExpertDispatcher(const ModelWeights* weights, const ShardMap* shard_map,
                                                         Exchange* exchange, ThreadPool* pool)
    : weights_(weights), shard_map_(shard_map), exchange_(exchange), pool_(pool) {}

void DistributedExpertDispatcher::BeginStep(uint64_t step_id, int64_t num_tokens) {
  step_id_ = step_id;
  const ModelConfig& c = weights_->config();
  traffic_.per_layer.assign(static_cast<size_t>(c.num_layers), 0);
  traffic_.per_peer.assign(static_cast<size_t>(exchange_->size()), 0);
  traffic_.per_token.assign(static_cast<size_t>(num_tokens), 0);
  traffic_.expert_tokens.assign(static_cast<size_t>(c.num_layers * c.num_experts), 0);
}

absl::StatusOr<bool> DistributedExpertDispatcher::DispatchCombine(const MoeCall& call, const RoutingDecision& routing,
                                                                  const float* x, float* out) {
  const int64_t layer = call.layer;
  const ModelConfig& c = weights_->config();
  const int me = exchange_->rank(), peers = exchange_->size();
  const RecordLayout rec{c.top_k, c.hidden_size};
  const int64_t h = c.hidden_size, k = routing.top_k;
  // Two collectives (dispatch, combine) per pass of each layer.
  constexpr uint64_t kTagsPerLayer = 2 * kMaxLayerPasses;
  const uint64_t tag_base = (step_id_ * static_cast<uint64_t>(c.num_layers) + static_cast<uint64_t>(layer)) * kTagsPerLayer +
                            2 * static_cast<uint64_t>(call.pass);
  const int32_t flags = call.pass == 0 && call.wants_repeat ? kWantsRepeatFlag : 0;

  // 1. Plan: for each destination, the tokens it gets and which of their experts it runs.
  std::vector<std::vector<int64_t>> sent_tokens(static_cast<size_t>(peers));
  std::vector<std::string> send(static_cast<size_t>(peers));
  for (auto& s : send) s.assign(kHeaderBytes, '\0');
  std::vector<int32_t> experts(static_cast<size_t>(k));
  std::vector<float> weights(static_cast<size_t>(k));
  for (int64_t t = 0; t < routing.num_tokens; ++t) {
    for (int dest = 0; dest < peers; ++dest) {
      int32_t n = 0;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t e = routing.experts[t * k + j];
        if (e == kNoExpert || shard_map_->OwnerFor(layer, e, t, me) != dest) continue;
        experts[n] = e;
        weights[n] = routing.weights[t * k + j];
        ++n;
      }
      if (n == 0) continue;
      for (int64_t j = n; j < k; ++j) {
        experts[j] = -1;
        weights[j] = 0.0f;
      }
      std::string& s = send[dest];
      Append(&s, &n, 1);
      Append(&s, experts.data(), static_cast<size_t>(k));
      Append(&s, weights.data(), static_cast<size_t>(k));
      Append(&s, x + t * h, static_cast<size_t>(h));
      sent_tokens[dest].push_back(t);
      if (dest != me) traffic_.per_token[call.step_rows.empty() ? t : call.step_rows[t]] += static_cast<int64_t>(rec.bytes() + 4 * h);
    }
  }
  for (int dest = 0; dest < peers; ++dest) {
    const int32_t count = static_cast<int32_t>(sent_tokens[dest].size());
    std::memcpy(send[dest].data(), &count, 4);
    std::memcpy(send[dest].data() + 4, &flags, 4);
    if (dest != me) {
      traffic_.per_layer[layer] += static_cast<int64_t>(send[dest].size());
      traffic_.per_peer[dest] += static_cast<int64_t>(send[dest].size());
    }
  }

  // 2. Dispatch.
  MOE_ASSIGN_OR_RETURN(std::vector<std::string> recv, exchange_->AllToAll(tag_base, std::move(send)));

  // 3. Validate what arrived, then run each local expert on all the rows that need it.
  const MoeWeights& moe = weights_->layers[layer].moe;
  const int64_t table = static_cast<int64_t>(moe.experts.size());
  std::vector<int32_t> counts(static_cast<size_t>(peers));
  bool any_repeat = false;
  struct Slot { int from; int32_t row; float weight; };
  std::vector<std::vector<Slot>> by_expert(static_cast<size_t>(table));
  for (int from = 0; from < peers; ++from) {
    const std::string& m = recv[from];
    if (m.size() < kHeaderBytes) {
      return absl::DataLossError(absl::StrCat("layer ", layer, ": short dispatch message from worker ", from));
    }
    counts[from] = ReadAt<int32_t>(m, 0);
    const int32_t peer_flags = ReadAt<int32_t>(m, 4);
    if (counts[from] < 0 || m.size() != kHeaderBytes + static_cast<size_t>(counts[from]) * rec.bytes() ||
        (peer_flags & ~kWantsRepeatFlag) != 0 || (call.pass > 0 && peer_flags != 0)) {
      return absl::DataLossError(absl::StrCat("layer ", layer, ": malformed dispatch message from worker ", from));
    }
    any_repeat |= (peer_flags & kWantsRepeatFlag) != 0;
    for (int32_t row = 0; row < counts[from]; ++row) {
      const size_t base = kHeaderBytes + static_cast<size_t>(row) * rec.bytes();
      const int32_t n = ReadAt<int32_t>(m, base);
      if (n < 1 || n > k) return absl::DataLossError(absl::StrCat("layer ", layer, ": bad expert count from worker ", from));
      for (int32_t j = 0; j < n; ++j) {
        const int32_t e = ReadAt<int32_t>(m, base + 4 + 4 * j);
        if (e < 0 || e >= table || !moe.experts[e].loaded()) {
          return absl::DataLossError(absl::StrCat("layer ", layer, ": worker ", from, " sent a token for expert ", e,
                                                  ", which this worker does not hold"));
        }
        by_expert[e].push_back({from, row, ReadAt<float>(m, base + 4 + 4 * k + 4 * j)});
      }
    }
  }
  std::vector<std::vector<float>> replies(static_cast<size_t>(peers));
  for (int from = 0; from < peers; ++from) replies[from].assign(static_cast<size_t>(counts[from]) * h, 0.0f);
  for (int64_t e = 0; e < table; ++e) {
    const auto& slots = by_expert[e];
    if (slots.empty()) continue;
    // Merged experts of task maps (ids past the checkpoint's) are not in the per-expert load table.
    if (e < c.num_experts) traffic_.expert_tokens[layer * c.num_experts + e] += static_cast<int64_t>(slots.size());
    const int64_t n = static_cast<int64_t>(slots.size());
    gathered_.resize(static_cast<size_t>(n * h));
    expert_out_.resize(gathered_.size());
    for (int64_t i = 0; i < n; ++i) {
      const size_t base = kHeaderBytes + static_cast<size_t>(slots[i].row) * rec.bytes() + 4 + 8 * static_cast<size_t>(k);
      std::memcpy(gathered_.data() + i * h, recv[slots[i].from].data() + base, sizeof(float) * static_cast<size_t>(h));
    }
    RunFfn(moe.experts[e], gathered_.data(), n, expert_out_.data(), &scratch_, pool_);
    for (int64_t i = 0; i < n; ++i) {
      AddProduct(slots[i].weight, expert_out_.data() + i * h, replies[slots[i].from].data() + slots[i].row * h, h);
    }
  }

  // 4. Combine: send the weighted sums back and add them up per token.
  std::vector<std::string> back(static_cast<size_t>(peers));
  for (int to = 0; to < peers; ++to) {
    back[to].assign(reinterpret_cast<const char*>(replies[to].data()), replies[to].size() * sizeof(float));
    if (to != me) {
      traffic_.per_layer[layer] += static_cast<int64_t>(back[to].size());
      traffic_.per_peer[to] += static_cast<int64_t>(back[to].size());
    }
  }
  MOE_ASSIGN_OR_RETURN(std::vector<std::string> results, exchange_->AllToAll(tag_base + 1, std::move(back)));
  std::memset(out, 0, sizeof(float) * static_cast<size_t>(routing.num_tokens * h));
  for (int from = 0; from < peers; ++from) {
    const auto& tokens = sent_tokens[from];
    if (results[from].size() != tokens.size() * static_cast<size_t>(h) * sizeof(float)) {
      return absl::DataLossError(absl::StrCat("layer ", layer, ": malformed combine message from worker ", from));
    }
    const float* rows = reinterpret_cast<const float*>(results[from].data());
    for (size_t i = 0; i < tokens.size(); ++i) Axpy(1.0f, rows + i * h, out + tokens[i] * h, h);
  }
  return any_repeat;
}

}  // namespace moe
