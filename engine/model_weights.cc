#include "engine/model_weights.h"

#include "common/status.h"

namespace moe {
namespace {

class Loader {
 public:
  Loader(const ModelSource& source, const LoadOptions& options) : source_(source), options_(options) {}

  absl::StatusOr<MatrixView> Matrix(const std::string& name, int64_t rows, int64_t cols) {
    MOE_ASSIGN_OR_RETURN(TensorView t, source_.Tensor(name, {rows, cols}));
    return MatrixView{t.data, t.dtype, rows, cols};
  }

  absl::StatusOr<std::vector<float>> Vector(const std::string& name, int64_t n) {
    MOE_ASSIGN_OR_RETURN(TensorView t, source_.Tensor(name, {n}));
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[i] = LoadAsFloat(t.data, t.dtype, static_cast<size_t>(i));
    return v;
  }

  DType StorageFor(DType source_dtype) const {
    if (options_.storage) return *options_.storage;
    return source_dtype == DType::kBF16 ? DType::kBF16 : DType::kF32;
  }

  absl::StatusOr<PackedMatrix> Packed(const std::string& name, int64_t rows, int64_t cols) {
    MOE_ASSIGN_OR_RETURN(MatrixView m, Matrix(name, rows, cols));
    return PackedMatrix::Pack(m, StorageFor(m.dtype));
  }

  absl::StatusOr<FfnWeights> Ffn(const std::function<std::string(FfnProjection)>& name, int64_t ffn, int64_t hidden) {
    MOE_ASSIGN_OR_RETURN(MatrixView gate, Matrix(name(FfnProjection::kGate), ffn, hidden));
    MOE_ASSIGN_OR_RETURN(MatrixView up, Matrix(name(FfnProjection::kUp), ffn, hidden));
    FfnWeights f;
    const MatrixView gate_up[] = {gate, up};
    f.gate_up = PackedMatrix::Pack(gate_up, StorageFor(gate.dtype));
    MOE_ASSIGN_OR_RETURN(f.down, Packed(name(FfnProjection::kDown), hidden, ffn));
    return f;
  }

 private:
  const ModelSource& source_;
  const LoadOptions& options_;
};

absl::Status LoadLayer(Loader& ld, const ModelConfig& c, int64_t l, const LoadOptions& options, LayerWeights* out) {
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  MOE_ASSIGN_OR_RETURN(out->input_norm, ld.Vector(c.LayerTensor(l, "input_layernorm.weight"), h));
  MOE_ASSIGN_OR_RETURN(out->post_attention_norm, ld.Vector(c.LayerTensor(l, "post_attention_layernorm.weight"), h));
  MOE_ASSIGN_OR_RETURN(MatrixView wq, ld.Matrix(c.LayerTensor(l, "self_attn.q_proj.weight"), q, h));
  MOE_ASSIGN_OR_RETURN(MatrixView wk, ld.Matrix(c.LayerTensor(l, "self_attn.k_proj.weight"), kv, h));
  MOE_ASSIGN_OR_RETURN(MatrixView wv, ld.Matrix(c.LayerTensor(l, "self_attn.v_proj.weight"), kv, h));
  const MatrixView qkv[] = {wq, wk, wv};
  out->attention.qkv = PackedMatrix::Pack(qkv, ld.StorageFor(wq.dtype));
  if (c.arch->attention_bias) {
    MOE_ASSIGN_OR_RETURN(std::vector<float> bq, ld.Vector(c.LayerTensor(l, "self_attn.q_proj.bias"), q));
    MOE_ASSIGN_OR_RETURN(std::vector<float> bk, ld.Vector(c.LayerTensor(l, "self_attn.k_proj.bias"), kv));
    MOE_ASSIGN_OR_RETURN(std::vector<float> bv, ld.Vector(c.LayerTensor(l, "self_attn.v_proj.bias"), kv));
    out->attention.qkv_bias = bq;
    out->attention.qkv_bias.insert(out->attention.qkv_bias.end(), bk.begin(), bk.end());
    out->attention.qkv_bias.insert(out->attention.qkv_bias.end(), bv.begin(), bv.end());
  }
  MOE_ASSIGN_OR_RETURN(out->attention.o, ld.Packed(c.LayerTensor(l, "self_attn.o_proj.weight"), h, q));

  out->is_moe = c.IsMoeLayer(l);
  if (!out->is_moe) {
    MOE_ASSIGN_OR_RETURN(out->dense, ld.Ffn([&](FfnProjection p) { return c.DenseMlpTensor(l, p); }, c.dense_ffn_size, h));
    return absl::OkStatus();
  }
  MOE_ASSIGN_OR_RETURN(out->moe.router, ld.Packed(c.RouterGateTensor(l), c.num_experts, h));
  out->moe.experts.resize(static_cast<size_t>(c.num_experts));
  for (int64_t e = 0; e < c.num_experts; ++e) {
    if (options.owns_expert && !options.owns_expert(l, e)) continue;
    MOE_ASSIGN_OR_RETURN(out->moe.experts[e],
                         ld.Ffn([&](FfnProjection p) { return c.ExpertTensor(l, e, p); }, c.expert_ffn_size, h));
  }
  if (c.shared_expert_ffn_size > 0) {
    MOE_ASSIGN_OR_RETURN(out->moe.shared_expert, ld.Ffn([&](FfnProjection p) { return c.SharedExpertTensor(l, p); },
                                                        c.shared_expert_ffn_size, h));
    MOE_ASSIGN_OR_RETURN(out->moe.shared_expert_gate, ld.Packed(c.SharedExpertGateTensor(l), 1, h));
  }
  return absl::OkStatus();
}

}  // namespace

size_t ModelWeights::packed_bytes() const {
  size_t total = lm_head.size_bytes();
  for (const LayerWeights& l : layers) {
    total += l.attention.qkv.size_bytes() + l.attention.o.size_bytes() + l.dense.size_bytes() + l.moe.router.size_bytes();
    for (const FfnWeights& e : l.moe.experts) total += e.size_bytes();
    total += l.moe.shared_expert.size_bytes() + l.moe.shared_expert_gate.size_bytes();
  }
  return total;
}

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModelWeights(std::shared_ptr<const ModelSource> source,
                                                               const LoadOptions& options, ThreadPool* pool) {
  auto w = std::make_unique<ModelWeights>();
  w->source = source;
  const ModelConfig& c = source->config();
  Loader ld(*source, options);
  MOE_ASSIGN_OR_RETURN(w->embedding, source->Tensor("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}));
  MOE_ASSIGN_OR_RETURN(w->final_norm, ld.Vector("model.norm.weight", c.hidden_size));
  const std::string head = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  MOE_ASSIGN_OR_RETURN(w->lm_head, ld.Packed(head, c.vocab_size, c.hidden_size));

  // Layers load in parallel: each is independent and repacking is CPU-bound.
  w->layers.resize(static_cast<size_t>(c.num_layers));
  std::vector<absl::Status> status(w->layers.size());
  auto load = [&](int64_t begin, int64_t end) {
    for (int64_t l = begin; l < end; ++l) status[l] = LoadLayer(ld, c, l, options, &w->layers[l]);
  };
  if (pool != nullptr) pool->ParallelFor(c.num_layers, load);
  else load(0, c.num_layers);
  for (const absl::Status& s : status) MOE_RETURN_IF_ERROR(s);
  return w;
}

}  // namespace moe
