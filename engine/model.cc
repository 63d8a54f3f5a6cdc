#include "engine/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/kernels.h"

namespace moe {

KvCache::KvCache(const ModelConfig& c)
    : kv_dim_(c.num_kv_heads * c.head_dim),
      num_layers_(c.num_layers),
      keys_(static_cast<size_t>(c.num_layers * kMaxLayerPasses)),
      values_(keys_.size()) {}

absl::Status KvCache::SetLayerPath(LayerPath path) {
  if (length_ > 0) return absl::FailedPreconditionError("a layer path can only be set before the first token");
  MOE_RETURN_IF_ERROR(ValidateLayerPath(path, num_layers_));
  layer_path_ = std::move(path);
  return absl::OkStatus();
}

Model::Model(std::unique_ptr<ModelWeights> weights, ThreadPool* pool, ExpertDispatcher* dispatcher)
    : weights_(std::move(weights)), pool_(pool) {
  if (dispatcher == nullptr) {
    local_dispatcher_ = std::make_unique<LocalExpertDispatcher>(weights_.get(), pool_);
    dispatcher = local_dispatcher_.get();
  }
  dispatcher_ = dispatcher;
  const ModelConfig& c = config();
  // As Hugging Face computes it: inv_freq = 1 / theta^(2i / d) in float32.
  for (int64_t i = 0; i < c.head_dim / 2; ++i) {
    inv_freq_.push_back(static_cast<float>(
        1.0 / std::pow(c.rope_theta, static_cast<double>(static_cast<float>(2 * i) / static_cast<float>(c.head_dim)))));
  }
  ResetExpertUsage();
}

void Model::ResetExpertUsage() {
  expert_usage_.assign(static_cast<size_t>(config().num_layers), std::vector<int64_t>(static_cast<size_t>(config().num_experts), 0));
}

void Model::RmsNorm(const float* x, const std::vector<float>& weight, int64_t rows, float* out) const {
  const int64_t h = config().hidden_size;
  const float eps = static_cast<float>(config().rms_norm_eps);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * h;
    const float mean_square = Dot(xr, xr, h) / static_cast<float>(h);
    const float scale = 1.0f / std::sqrt(mean_square + eps);
    for (int64_t i = 0; i < h; ++i) out[r * h + i] = weight[i] * (xr[i] * scale);
  }
}

// Rotates each head's halves (Hugging Face's rotate_half convention, not interleaved pairs).
void Model::ApplyRope(float* vec, int64_t num_heads, int64_t position) const {
  const int64_t d = config().head_dim, half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float angle = static_cast<float>(position) * inv_freq_[i];
    const float c = std::cos(angle), s = std::sin(angle);
    for (int64_t head = 0; head < num_heads; ++head) {
      float* v = vec + head * d;
      const float a = v[i], b = v[i + half];
      v[i] = a * c - b * s;
      v[i + half] = b * c + a * s;
    }
  }
}

void Model::Attention(size_t slot, std::span<const ForwardInput> batch, const std::vector<int64_t>& row_start,
                      const std::vector<int64_t>& past, const float* qkv, float* out) {
  const ModelConfig& c = config();
  const int64_t d = c.head_dim, q_dim = c.num_heads * d, kv_dim = c.num_kv_heads * d;
  const int64_t qkv_dim = q_dim + 2 * kv_dim, group = c.num_heads / c.num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int64_t work_items = static_cast<int64_t>(batch.size()) * c.num_heads;
  auto run = [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / c.num_heads, head = item % c.num_heads, kv_head = head / group;
      const KvCache& cache = *batch[b].cache;
      const int64_t n_new = static_cast<int64_t>(batch[b].tokens.size());
      const float* keys = cache.keys_[slot].data() + kv_head * d;
      const float* values = cache.values_[slot].data() + kv_head * d;
      for (int64_t i = 0; i < n_new; ++i) {
        const int64_t pos = past[b] + i;  // the cache already holds this step's keys up to pos
        const int64_t first = c.sliding_window > 0 ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
        const float* q = qkv + (row_start[b] + i) * qkv_dim + head * d;
        scores.resize(static_cast<size_t>(pos + 1 - first));
        float max_score = -std::numeric_limits<float>::infinity();
        for (int64_t j = first; j <= pos; ++j) {
          const float s = Dot(q, keys + j * kv_dim, d) * scale;
          scores[j - first] = s;
          max_score = std::max(max_score, s);
        }
        float sum = 0.0f;
        for (float& s : scores) sum += s = std::exp(s - max_score);
        float* o = out + (row_start[b] + i) * q_dim + head * d;
        std::memset(o, 0, sizeof(float) * static_cast<size_t>(d));
        for (int64_t j = first; j <= pos; ++j) Axpy(scores[j - first] / sum, values + j * kv_dim, o, d);
      }
    }
  };
  pool_->ParallelFor(work_items, run);
}

absl::StatusOr<bool> Model::RunLayer(int64_t l, int pass, bool wants_repeat, std::span<const ForwardInput> batch,
                                     const std::vector<int64_t>& row_start, const std::vector<int64_t>& past,
                                     float* hidden, std::span<const int64_t> step_rows) {
  const ModelConfig& c = config();
  const int64_t h = c.hidden_size, d = c.head_dim;
  const int64_t q_dim = c.num_heads * d, kv_dim = c.num_kv_heads * d, qkv_dim = q_dim + 2 * kv_dim;
  const int64_t rows = row_start.back();
  const size_t slot = KvCache::Slot(l, pass);
  normed_.resize(static_cast<size_t>(rows * h));
  qkv_.resize(static_cast<size_t>(rows * qkv_dim));
  attn_.resize(static_cast<size_t>(rows * q_dim));
  ffn_out_.resize(static_cast<size_t>(rows * h));

  const LayerWeights& lw = weights_->layers[l];
  RmsNorm(hidden, lw.input_norm, rows, normed_.data());
  MatMul(normed_.data(), rows, lw.attention.qkv, qkv_.data(), pool_);
  for (size_t b = 0; b < batch.size(); ++b) {
    KvCache& cache = *batch[b].cache;
    const int64_t n = static_cast<int64_t>(batch[b].tokens.size());
    auto& keys = cache.keys_[slot];
    auto& values = cache.values_[slot];
    keys.resize(static_cast<size_t>((past[b] + n) * kv_dim));
    values.resize(keys.size());
    for (int64_t i = 0; i < n; ++i) {
      float* row = qkv_.data() + (row_start[b] + i) * qkv_dim;
      if (!lw.attention.qkv_bias.empty()) Axpy(1.0f, lw.attention.qkv_bias.data(), row, qkv_dim);
      const int64_t pos = past[b] + i;
      ApplyRope(row, c.num_heads, pos);
      ApplyRope(row + q_dim, c.num_kv_heads, pos);
      std::memcpy(keys.data() + pos * kv_dim, row + q_dim, sizeof(float) * static_cast<size_t>(kv_dim));
      std::memcpy(values.data() + pos * kv_dim, row + q_dim + kv_dim, sizeof(float) * static_cast<size_t>(kv_dim));
    }
  }
  Attention(slot, batch, row_start, past, qkv_.data(), attn_.data());
  MatMul(attn_.data(), rows, q_dim, lw.attention.o, hidden, h, /*accumulate=*/true, pool_);

  RmsNorm(hidden, lw.post_attention_norm, rows, normed_.data());
  bool any_repeat = pass == 0 && wants_repeat;
  if (!lw.is_moe) {
    RunFfn(lw.dense, normed_.data(), rows, ffn_out_.data(), &scratch_, pool_);
  } else {
    router_logits_.resize(static_cast<size_t>(rows * c.num_experts));
    MatMul(normed_.data(), rows, lw.moe.router, router_logits_.data(), pool_);
    if (router_observer_) router_observer_(l, router_logits_.data(), rows);
    const bool any_task_map =
        std::any_of(batch.begin(), batch.end(), [](const ForwardInput& in) { return in.slot_routing != nullptr; });
    if (any_task_map) {  // each row routes through its sequence's task map for this layer
      row_targets_.resize(static_cast<size_t>(rows));
      for (size_t b = 0; b < batch.size(); ++b) {
        const int32_t* targets = batch[b].slot_routing ? batch[b].slot_routing->LayerTargets(l) : nullptr;
        std::fill(row_targets_.begin() + row_start[b], row_targets_.begin() + row_start[b + 1], targets);
      }
    }
    RoutingDecision routing = ComputeRouting(router_logits_.data(), rows, c,
                                             any_task_map ? std::span<const int32_t* const>(row_targets_)
                                                          : std::span<const int32_t* const>());
    for (int32_t e : routing.experts) {
      if (e == kNoExpert) continue;
      if (e >= static_cast<int32_t>(expert_usage_[l].size())) expert_usage_[l].resize(static_cast<size_t>(e) + 1, 0);
      ++expert_usage_[l][e];
    }
    MOE_ASSIGN_OR_RETURN(any_repeat, dispatcher_->DispatchCombine({l, pass, wants_repeat, step_rows}, routing, normed_.data(),
                                                                  ffn_out_.data()));
    if (lw.moe.shared_expert.loaded()) {
      shared_out_.resize(static_cast<size_t>(rows * h));
      shared_gate_.resize(static_cast<size_t>(rows));
      RunFfn(lw.moe.shared_expert, normed_.data(), rows, shared_out_.data(), &scratch_, pool_);
      MatMul(normed_.data(), rows, lw.moe.shared_expert_gate, shared_gate_.data(), pool_);
      for (int64_t r = 0; r < rows; ++r) {
        Axpy(1.0f / (1.0f + std::exp(-shared_gate_[r])), shared_out_.data() + r * h, ffn_out_.data() + r * h, h);
      }
    }
  }
  Axpy(1.0f, ffn_out_.data(), hidden, rows * h);
  return any_repeat;
}

absl::StatusOr<std::vector<float>> Model::Forward(std::span<const ForwardInput> batch) {
  const ModelConfig& c = config();
  const int64_t h = c.hidden_size;

  std::vector<int64_t> row_start(batch.size() + 1, 0);
  int64_t logit_rows = 0;
  for (size_t b = 0; b < batch.size(); ++b) {
    const ForwardInput& in = batch[b];
    if (in.cache == nullptr || in.tokens.empty()) return absl::InvalidArgumentError("forward: an input has no tokens");
    for (int32_t t : in.tokens) {
      if (t < 0 || t >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", t, " is outside the vocabulary [0, ", c.vocab_size, ")"));
      }
    }
    const int64_t n = static_cast<int64_t>(in.tokens.size());
    if (in.cache->length() + n > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("sequence of ", in.cache->length() + n,
                                                     " tokens exceeds the context of ", c.max_position_embeddings));
    }
    row_start[b + 1] = row_start[b] + n;
    logit_rows += in.all_logits ? n : 1;
  }
  const int64_t rows = row_start.back();
  std::vector<int64_t> past(batch.size());  // cache lengths before this step
  for (size_t b = 0; b < batch.size(); ++b) past[b] = batch[b].cache->length();

  // Inputs whose policy decides their layer path below, layer by layer (first step only); the others run
  // their cache's path.
  std::vector<LayerPath> decided(batch.size());
  for (size_t b = 0; b < batch.size(); ++b) {
    const KvCache& cache = *batch[b].cache;
    if (batch[b].layer_policy != nullptr && cache.length() == 0 && cache.layer_path().empty()) {
      decided[b].assign(static_cast<size_t>(c.num_layers), kRunLayer);
    }
  }
  auto runs = [&](size_t b, int64_t l) { return decided[b].empty() ? batch[b].cache->runs(l) : decided[b][l]; };

  hidden_.resize(static_cast<size_t>(rows * h));
  for (size_t b = 0; b < batch.size(); ++b) {
    for (size_t i = 0; i < batch[b].tokens.size(); ++i) {
      float* dst = hidden_.data() + (row_start[b] + static_cast<int64_t>(i)) * h;
      const size_t base = static_cast<size_t>(batch[b].tokens[i]) * static_cast<size_t>(h);
      for (int64_t k = 0; k < h; ++k) dst[k] = LoadAsFloat(weights_->embedding.data, weights_->embedding.dtype, base + k);
    }
  }

  std::vector<ForwardInput> pass_batch;
  std::vector<size_t> pass_members;
  std::vector<int64_t> pass_row_start, pass_past;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    bool wants_repeat = false;
    for (size_t b = 0; b < batch.size(); ++b) {
      if (!decided[b].empty()) {
        const int chosen = batch[b].layer_policy->Decide(l, hidden_.data() + row_start[b] * h, row_start[b + 1] - row_start[b]);
        if (chosen < kSkipLayer || chosen > kRepeatLayer) {
          return absl::InternalError(absl::StrCat("layer policy chose ", chosen, " runs of layer ", l));
        }
        decided[b][l] = static_cast<uint8_t>(chosen);
      }
      wants_repeat |= runs(b, l) == kRepeatLayer;
    }
    bool repeat_agreed = false;
    for (int pass = 0; pass < kMaxLayerPasses; ++pass) {
      if (pass > 0 && !repeat_agreed) break;
      pass_members.clear();
      for (size_t b = 0; b < batch.size(); ++b) {
        if (runs(b, l) > pass) pass_members.push_back(b);
      }
      bool any_repeat = false;
      if (pass_members.size() == batch.size()) {  // everyone runs this pass: in place
        MOE_ASSIGN_OR_RETURN(any_repeat, RunLayer(l, pass, wants_repeat, batch, row_start, past, hidden_.data(), {}));
      } else {  // gather the running sequences' rows, run, scatter back
        pass_batch.clear();
        pass_past.clear();
        pass_row_start.assign(1, 0);
        pass_rows_.clear();
        for (size_t b : pass_members) {
          pass_batch.push_back(batch[b]);
          pass_past.push_back(past[b]);
          pass_row_start.push_back(pass_row_start.back() + row_start[b + 1] - row_start[b]);
          for (int64_t r = row_start[b]; r < row_start[b + 1]; ++r) pass_rows_.push_back(r);
        }
        pass_hidden_.resize(static_cast<size_t>(pass_row_start.back() * h));
        for (size_t i = 0; i < pass_members.size(); ++i) {
          const size_t b = pass_members[i];
          std::memcpy(pass_hidden_.data() + pass_row_start[i] * h, hidden_.data() + row_start[b] * h,
                      sizeof(float) * static_cast<size_t>((row_start[b + 1] - row_start[b]) * h));
        }
        MOE_ASSIGN_OR_RETURN(any_repeat, RunLayer(l, pass, wants_repeat, pass_batch, pass_row_start, pass_past,
                                                  pass_hidden_.data(), pass_rows_));
        for (size_t i = 0; i < pass_members.size(); ++i) {
          const size_t b = pass_members[i];
          std::memcpy(hidden_.data() + row_start[b] * h, pass_hidden_.data() + pass_row_start[i] * h,
                      sizeof(float) * static_cast<size_t>((row_start[b + 1] - row_start[b]) * h));
        }
      }
      if (pass == 0) repeat_agreed = any_repeat;
    }
  }
  for (size_t b = 0; b < batch.size(); ++b) {
    batch[b].cache->length_ = past[b] + static_cast<int64_t>(batch[b].tokens.size());
    if (!decided[b].empty()) batch[b].cache->layer_path_ = std::move(decided[b]);
  }

  // Final norm and LM head for the rows that need logits.
  std::vector<float> selected(static_cast<size_t>(logit_rows * h));
  int64_t out_row = 0;
  for (size_t b = 0; b < batch.size(); ++b) {
    const int64_t first = batch[b].all_logits ? row_start[b] : row_start[b + 1] - 1;
    for (int64_t r = first; r < row_start[b + 1]; ++r, ++out_row) {
      RmsNorm(hidden_.data() + r * h, weights_->final_norm, 1, selected.data() + out_row * h);
    }
  }
  std::vector<float> logits(static_cast<size_t>(logit_rows * c.vocab_size));
  MatMul(selected.data(), logit_rows, weights_->lm_head, logits.data(), pool_);
  return logits;
}

}  // namespace moe
