#include "worker/distributed_dispatcher.h"

#include <algorithm>
#include <chrono>
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
char* Put(char* at, const T* v, size_t n) {
  std::memcpy(at, v, sizeof(T) * n);
  return at + sizeof(T) * n;
}

template <typename T>
T ReadAt(const char* base, size_t offset) {
  T v;
  std::memcpy(&v, base + offset, sizeof v);
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
  traffic_.exchange_ns = 0;
}

absl::Status DistributedExpertDispatcher::TimedAllToAllV(uint64_t tag, const ExchangeBuffer& send, ExchangeBuffer* recv) {
  const auto start = std::chrono::steady_clock::now();
  absl::Status status = exchange_->AllToAllV(tag, send, recv);
  traffic_.exchange_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
  return status;
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

  // 1. Plan: which worker runs each routed slot (-1: dropped), decided once per slot, and for each
  // destination the tokens it gets (in token order, once however many of their slots it runs).
  slot_owner_.resize(static_cast<size_t>(routing.num_tokens * k));
  sent_tokens_.resize(static_cast<size_t>(peers));
  for (auto& tokens : sent_tokens_) tokens.clear();
  for (int64_t t = 0; t < routing.num_tokens; ++t) {
    const int* owners = slot_owner_.data() + t * k;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = routing.experts[t * k + j];
      const int owner = e == kNoExpert ? -1 : shard_map_->OwnerFor(layer, e, t, me);
      slot_owner_[t * k + j] = owner;
      if (owner >= 0 && std::find(owners, owners + j, owner) == owners + j) sent_tokens_[owner].push_back(t);
    }
  }
  // The experts of token t that `dest` runs, into experts/weights (unused entries -1 / 0); returns how many.
  std::vector<int32_t> experts(static_cast<size_t>(k));
  std::vector<float> weights(static_cast<size_t>(k));
  auto experts_at = [&](int64_t t, int dest) {
    int32_t n = 0;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = routing.experts[t * k + j];
      if (slot_owner_[t * k + j] != dest) continue;
      experts[n] = e;
      weights[n] = routing.weights[t * k + j];
      ++n;
    }
    for (int64_t j = n; j < k; ++j) {
      experts[j] = -1;
      weights[j] = 0.0f;
    }
    return n;
  };

  // Then write every record into its destination's block.
  block_sizes_.resize(static_cast<size_t>(peers));
  for (int dest = 0; dest < peers; ++dest) block_sizes_[dest] = kHeaderBytes + sent_tokens_[dest].size() * rec.bytes();
  dispatch_send_.Layout(block_sizes_);
  for (int dest = 0; dest < peers; ++dest) {
    const int32_t count = static_cast<int32_t>(sent_tokens_[dest].size());
    char* at = Put(dispatch_send_.block(dest), &count, 1);
    at = Put(at, &flags, 1);
    for (int64_t t : sent_tokens_[dest]) {
      const int32_t n = experts_at(t, dest);
      at = Put(at, &n, 1);
      at = Put(at, experts.data(), static_cast<size_t>(k));
      at = Put(at, weights.data(), static_cast<size_t>(k));
      at = Put(at, x + t * h, static_cast<size_t>(h));
      if (dest != me) traffic_.per_token[call.step_rows.empty() ? t : call.step_rows[t]] += static_cast<int64_t>(rec.bytes() + 4 * h);
    }
    if (dest != me) {
      traffic_.per_layer[layer] += static_cast<int64_t>(block_sizes_[dest]);
      traffic_.per_peer[dest] += static_cast<int64_t>(block_sizes_[dest]);
    }
  }

  // 2. Dispatch.
  MOE_RETURN_IF_ERROR(TimedAllToAllV(tag_base, dispatch_send_, &dispatch_recv_));

  // 3. Validate what arrived, then run each local expert on all the rows that need it.
  const MoeWeights& moe = weights_->layers[layer].moe;
  const int64_t table = static_cast<int64_t>(moe.experts.size());
  std::vector<int32_t> counts(static_cast<size_t>(peers));
  bool any_repeat = false;
  struct Slot { int from; int32_t row; float weight; };
  std::vector<std::vector<Slot>> by_expert(static_cast<size_t>(table));
  for (int from = 0; from < peers; ++from) {
    const char* m = dispatch_recv_.block(from);
    const size_t m_size = dispatch_recv_.block_size(from);
    if (m_size < kHeaderBytes) {
      return absl::DataLossError(absl::StrCat("layer ", layer, ": short dispatch message from worker ", from));
    }
    counts[from] = ReadAt<int32_t>(m, 0);
    const int32_t peer_flags = ReadAt<int32_t>(m, 4);
    if (counts[from] < 0 || m_size != kHeaderBytes + static_cast<size_t>(counts[from]) * rec.bytes() ||
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
  // The combine replies are accumulated in place in the combine send buffer: float[count][H] per peer.
  for (int from = 0; from < peers; ++from) block_sizes_[from] = static_cast<size_t>(counts[from] * h) * sizeof(float);
  combine_send_.Layout(block_sizes_);
  auto reply_rows = [&](int from) { return reinterpret_cast<float*>(combine_send_.block(from)); };
  for (int from = 0; from < peers; ++from) std::memset(combine_send_.block(from), 0, block_sizes_[from]);
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
      std::memcpy(gathered_.data() + i * h, dispatch_recv_.block(slots[i].from) + base, sizeof(float) * static_cast<size_t>(h));
    }
    RunFfn(moe.experts[e], gathered_.data(), n, expert_out_.data(), &scratch_, pool_);
    for (int64_t i = 0; i < n; ++i) {
      AddProduct(slots[i].weight, expert_out_.data() + i * h, reply_rows(slots[i].from) + slots[i].row * h, h);
    }
  }

  // 4. Combine: send the weighted sums back and add them up per token.
  for (int to = 0; to < peers; ++to) {
    if (to != me) {
      traffic_.per_layer[layer] += static_cast<int64_t>(block_sizes_[to]);
      traffic_.per_peer[to] += static_cast<int64_t>(block_sizes_[to]);
    }
  }
  MOE_RETURN_IF_ERROR(TimedAllToAllV(tag_base + 1, combine_send_, &combine_recv_));
  std::memset(out, 0, sizeof(float) * static_cast<size_t>(routing.num_tokens * h));
  for (int from = 0; from < peers; ++from) {
    const auto& tokens = sent_tokens_[from];
    if (combine_recv_.block_size(from) != tokens.size() * static_cast<size_t>(h) * sizeof(float)) {
      return absl::DataLossError(absl::StrCat("layer ", layer, ": malformed combine message from worker ", from));
    }
    const float* rows = reinterpret_cast<const float*>(combine_recv_.block(from));
    for (size_t i = 0; i < tokens.size(); ++i) Axpy(1.0f, rows + i * h, out + tokens[i] * h, h);
  }
  return any_repeat;
}

}  // namespace moe
