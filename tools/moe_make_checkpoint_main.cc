// moe-make-checkpoint: writes a random-weight Hugging Face checkpoint of any shape.
//   moe-make-checkpoint --out DIR [--model_type mixtral|qwen2_moe] [--hidden 64 --layers 2 ...]
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/flags.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "checkpoint/random_checkpoint.h"

ABSL_FLAG(std::string, out, "", "output directory");
ABSL_FLAG(std::string, model_type, "mixtral", "mixtral or qwen2_moe");
ABSL_FLAG(int64_t, vocab, 512, "vocabulary size");
ABSL_FLAG(int64_t, hidden, 64, "hidden size");
ABSL_FLAG(int64_t, layers, 2, "decoder layers");
ABSL_FLAG(int64_t, heads, 4, "attention heads");
ABSL_FLAG(int64_t, kv_heads, 2, "key/value heads");
ABSL_FLAG(int64_t, experts, 8, "routed experts per MoE layer");
ABSL_FLAG(int64_t, top_k, 2, "experts per token");
ABSL_FLAG(int64_t, expert_ffn, 96, "intermediate size of one expert");
ABSL_FLAG(int64_t, dense_ffn, 128, "intermediate size of dense layers (qwen2_moe)");
ABSL_FLAG(int64_t, shared_expert_ffn, 0, "shared expert size (qwen2_moe; 0 = none)");
ABSL_FLAG(bool, norm_topk_prob, false, "renormalize top-k weights (qwen2_moe)");
ABSL_FLAG(int64_t, decoder_sparse_step, 1, "every n-th layer is MoE (qwen2_moe)");
ABSL_FLAG(std::string, mlp_only_layers, "", "comma-separated dense layers (qwen2_moe)");
ABSL_FLAG(int64_t, max_positions, 2048, "context length");
ABSL_FLAG(std::string, dtype, "f32", "f32, bf16 or f16");
ABSL_FLAG(int32_t, shards, 1, "number of safetensors files");
ABSL_FLAG(bool, tokenizer, true, "train and write tokenizer.model");
ABSL_FLAG(uint64_t, seed, 1, "weight seed");

int main(int argc, char** argv) {
  moe::ParseFlags(argc, argv);
  moe::RandomCheckpointOptions o;
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) {
    std::cerr << "moe-make-checkpoint: --out is required\n";
    return 1;
  }
  o.model_type = absl::GetFlag(FLAGS_model_type);
  o.vocab_size = absl::GetFlag(FLAGS_vocab);
  o.hidden_size = absl::GetFlag(FLAGS_hidden);
  o.num_layers = absl::GetFlag(FLAGS_layers);
  o.num_heads = absl::GetFlag(FLAGS_heads);
  o.num_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  o.num_experts = absl::GetFlag(FLAGS_experts);
  o.top_k = absl::GetFlag(FLAGS_top_k);
  o.expert_ffn_size = absl::GetFlag(FLAGS_expert_ffn);
  o.dense_ffn_size = absl::GetFlag(FLAGS_dense_ffn);
  o.shared_expert_ffn_size = absl::GetFlag(FLAGS_shared_expert_ffn);
  o.norm_topk_prob = absl::GetFlag(FLAGS_norm_topk_prob);
  o.decoder_sparse_step = absl::GetFlag(FLAGS_decoder_sparse_step);
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_mlp_only_layers), ',', absl::SkipEmpty())) {
    int64_t layer;
    if (!absl::SimpleAtoi(part, &layer)) {
      std::cerr << "moe-make-checkpoint: --mlp_only_layers: '" << part << "' is not an integer\n";
      return 1;
    }
    o.mlp_only_layers.push_back(layer);
  }
  o.max_position_embeddings = absl::GetFlag(FLAGS_max_positions);
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (dtype == "f32") o.dtype = moe::DType::kF32;
  else if (dtype == "bf16") o.dtype = moe::DType::kBF16;
  else if (dtype == "f16") o.dtype = moe::DType::kF16;
  else {
    std::cerr << "moe-make-checkpoint: --dtype must be f32, bf16 or f16\n";
    return 1;
  }
  o.shards = absl::GetFlag(FLAGS_shards);
  o.tokenizer = absl::GetFlag(FLAGS_tokenizer);
  o.seed = absl::GetFlag(FLAGS_seed);
  if (absl::Status s = moe::WriteRandomCheckpoint(out, o); !s.ok()) {
    std::cerr << "moe-make-checkpoint: " << s << "\n";
    return 1;
  }
  std::cout << "wrote " << out << "\n";
  return 0;
}
