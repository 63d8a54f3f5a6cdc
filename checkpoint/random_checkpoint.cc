#include "checkpoint/random_checkpoint.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/model_config.h"
#include "checkpoint/safetensors_writer.h"
#include "checkpoint/tokenizer.h"
#include "common/splitmix.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

// A few paragraphs for the tokenizer; byte fallback covers anything else.
constexpr const char* kTokenizerCorpus[] = {
    "The quick brown fox jumps over the lazy dog while the cluster serves many requests.",
    "Mixture of experts models route every token to a few experts out of many.",
    "Add 123 and 456 to get 579. Reverse the string hello to get olleh.",
    "Sort the list 5 3 9 1 to get 1 3 5 9. Count the letter a in banana: 3.",
    "Convert 10 to binary: 1010. What is the value of key k7 in k1=4 k7=9? 9.",
    "Experts live on workers; tokens travel through an all to all exchange and come back combined.",
    "Once upon a time there was a small model that learned to answer questions exactly.",
};

// Seeded, so the same options write the same bytes everywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed) : bits_(seed) {}
  // Uniform in [-1, 1).
  float Uniform() { return static_cast<float>(bits_.NextUniform() * 2.0 - 1.0); }

 private:
  SplitMix64 bits_;
};

uint64_t HashName(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

nlohmann::json ConfigJson(const RandomCheckpointOptions& o) {
  nlohmann::json j = {
      {"model_type", o.model_type},
      {"vocab_size", o.vocab_size},
      {"hidden_size", o.hidden_size},
      {"num_hidden_layers", o.num_layers},
      {"num_attention_heads", o.num_heads},
      {"num_key_value_heads", o.num_kv_heads},
      {"num_experts_per_tok", o.top_k},
      {"max_position_embeddings", o.max_position_embeddings},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", o.rope_theta},
      {"tie_word_embeddings", o.tie_word_embeddings},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
      {"hidden_act", "silu"},
      {"torch_dtype", o.dtype == DType::kF32 ? "float32" : o.dtype == DType::kBF16 ? "bfloat16" : "float16"},
  };
  if (o.model_type == "mixtral") {
    j["architectures"] = {"MixtralForCausalLM"};
    j["num_local_experts"] = o.num_experts;
    j["intermediate_size"] = o.expert_ffn_size;
    j["sliding_window"] = nullptr;
  } else {
    j["architectures"] = {"Qwen2MoeForCausalLM"};
    j["num_experts"] = o.num_experts;
    j["moe_intermediate_size"] = o.expert_ffn_size;
    j["intermediate_size"] = o.dense_ffn_size;
    j["shared_expert_intermediate_size"] = o.shared_expert_ffn_size;
    j["norm_topk_prob"] = o.norm_topk_prob;
    j["decoder_sparse_step"] = o.decoder_sparse_step;
    j["mlp_only_layers"] = o.mlp_only_layers;
    j["use_sliding_window"] = false;
  }
  return j;
}

}  // namespace

absl::Status WriteRandomCheckpoint(const std::string& dir, const RandomCheckpointOptions& o) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot create: ", ec.message()));
  const std::string config_text = ConfigJson(o).dump(2);
  MOE_ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromJson(config_text, "random checkpoint options"));
  {
    std::ofstream out(fs::path(dir) / "config.json");
    out << config_text << "\n";
    if (!out) return absl::InternalError(absl::StrCat(dir, "/config.json: write failed"));
  }

  std::vector<TensorSpec> all;
  for (auto& [name, shape] : config.ExpectedTensors()) all.push_back({name, o.dtype, shape});
  auto fill = [&](const TensorSpec& spec, std::vector<float>* v) {
    Rng rng(o.seed * 0x100000001B3ull ^ HashName(spec.name));
    v->resize(static_cast<size_t>(spec.num_elements()));
    const bool is_norm = absl::StrContains(spec.name, "norm.weight");
    const bool is_bias = absl::StrContains(spec.name, ".bias");
    const bool is_embedding = absl::StrContains(spec.name, "embed_tokens");
    // Uniform on [-a, a] has std a/sqrt(3).
    const float scale = is_norm || is_bias ? 0.2f
                        : is_embedding     ? std::sqrt(3.0f)
                                           : std::sqrt(3.0f / static_cast<float>(spec.shape.back()));
    for (float& x : *v) x = (is_norm ? 1.0f : 0.0f) + scale * rng.Uniform();
  };

  const int shards = std::max(1, o.shards);
  if (shards == 1) {
    MOE_RETURN_IF_ERROR(WriteSafetensors((fs::path(dir) / "model.safetensors").string(), all,
                                         [&](size_t i, std::vector<float>* v) { fill(all[i], v); },
                                         {{"format", "pt"}}));
  } else {
    nlohmann::json weight_map = nlohmann::json::object();
    for (int s = 0; s < shards; ++s) {
      std::vector<TensorSpec> part;
      for (size_t i = 0; i < all.size(); ++i) {
        if (static_cast<int>(i % shards) == s) part.push_back(all[i]);
      }
      const std::string file = absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards);
      for (const TensorSpec& t : part) weight_map[t.name] = file;
      MOE_RETURN_IF_ERROR(WriteSafetensors((fs::path(dir) / file).string(), part,
                                           [&](size_t i, std::vector<float>* v) { fill(part[i], v); },
                                           {{"format", "pt"}}));
    }
    std::ofstream out(fs::path(dir) / "model.safetensors.index.json");
    out << nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", weight_map}}.dump(2) << "\n";
    if (!out) return absl::InternalError(absl::StrCat(dir, "/model.safetensors.index.json: write failed"));
  }

  if (o.tokenizer) {
    const fs::path corpus = fs::path(dir) / "tokenizer_corpus.txt";
    {
      std::ofstream out(corpus);
      for (int rep = 0; rep < 20; ++rep) {
        for (const char* line : kTokenizerCorpus) out << line << "\n";
      }
    }
    const int tokenizer_vocab = static_cast<int>(std::min<int64_t>(o.vocab_size, 400));
    MOE_RETURN_IF_ERROR(Tokenizer::Train(corpus.string(), (fs::path(dir) / "tokenizer").string(), tokenizer_vocab));
    fs::remove(corpus, ec);
    fs::remove(fs::path(dir) / "tokenizer.vocab", ec);
  }
  return absl::OkStatus();
}

}  // namespace moe
