// moe-bench-decode: prefill and decode tokens/s of the engine on a >= 1 GB Mixtral-shaped random BF16
// checkpoint, beside the memory-bandwidth roofline (read bandwidth measured in the same run / active
// bytes per decoded token) and the PyTorch reference (tools/hf_reference.py bench) on the same checkpoint.
//   build/bin/moe-bench-decode [--model DIR] [--prompt-len 64] [--decode-steps 32] [--torch=false]
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <random>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "bench/machine_limits.h"
#include "checkpoint/random_checkpoint.h"
#include "common/flags.h"
#include "engine/generator.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, model, "build/models/bench-mixtral-1g", "checkpoint (written if missing)");
ABSL_FLAG(int64_t, prompt_len, 64, "prompt tokens");
ABSL_FLAG(int64_t, decode_steps, 32, "decode steps (batch 1)");
ABSL_FLAG(bool, torch, true, "also run the PyTorch reference on the same checkpoint");
ABSL_FLAG(std::string, python, "/usr/bin/python3", "python with Debian's python3-torch");
ABSL_FLAG(int32_t, threads, 0, "threads (0 = one per core)");

namespace {

using Clock = std::chrono::steady_clock;

// Weight bytes one decoded token reads: attention, router, its top-k experts (mean expert size),
// shared/dense FFNs, one embedding row and the LM head.
double ActiveBytesPerToken(const moe::ModelWeights& w) {
  const moe::ModelConfig& c = w.config();
  double bytes = static_cast<double>(w.lm_head.size_bytes()) +
                 static_cast<double>(c.hidden_size * moe::DTypeSize(w.embedding.dtype));
  for (const moe::LayerWeights& l : w.layers) {
    bytes += static_cast<double>(l.attention.qkv.size_bytes() + l.attention.o.size_bytes());
    if (!l.is_moe) {
      bytes += static_cast<double>(l.dense.size_bytes());
      continue;
    }
    double experts = 0;
    for (const moe::FfnWeights& e : l.moe.experts) experts += static_cast<double>(e.size_bytes());
    bytes += static_cast<double>(l.moe.router.size_bytes()) + experts / c.num_experts * c.top_k +
             static_cast<double>(l.moe.shared_expert.size_bytes());
  }
  return bytes;
}

std::string RunCommand(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  std::array<char, 4096> buf;
  while (fgets(buf.data(), buf.size(), p) != nullptr) out += buf.data();
  pclose(p);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  moe::ParseFlags(argc, argv);
  const std::string dir = absl::GetFlag(FLAGS_model);
  if (!std::filesystem::exists(dir + "/config.json")) {
    moe::RandomCheckpointOptions o;
    o.vocab_size = 32000;
    o.hidden_size = 1024;
    o.num_layers = 8;
    o.num_heads = 16;
    o.num_kv_heads = 4;
    o.num_experts = 8;
    o.top_k = 2;
    o.expert_ffn_size = 3584;
    o.dtype = moe::DType::kBF16;
    o.tokenizer = false;
    std::cerr << "writing " << dir << " (Mixtral-shaped, 8 layers x 8 experts, BF16)...\n";
    if (auto s = moe::WriteRandomCheckpoint(dir, o); !s.ok()) {
      std::cerr << s << "\n";
      return 1;
    }
  }
  uint64_t file_bytes = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() == ".safetensors") file_bytes += e.file_size();
  }

  moe::ThreadPool pool(absl::GetFlag(FLAGS_threads));
  const double read_bw = moe::bench::MeasureReadBandwidthGBs(pool);
  const double memcpy_bw = moe::bench::MeasureMemcpyBandwidthGBs();

  auto source = moe::ModelSource::Open(dir);
  if (!source.ok()) {
    std::cerr << source.status() << "\n";
    return 1;
  }
  auto weights = moe::LoadModelWeights(std::move(*source), {}, &pool);
  if (!weights.ok()) {
    std::cerr << weights.status() << "\n";
    return 1;
  }
  const double active = ActiveBytesPerToken(**weights);
  moe::Model model(std::move(*weights), &pool);
  const int64_t vocab = model.config().vocab_size;

  std::mt19937 rng(0);
  moe::GenerationRequest req;
  for (int64_t i = 0; i < absl::GetFlag(FLAGS_prompt_len); ++i) req.prompt.push_back(3 + static_cast<int32_t>(rng() % (vocab - 3)));
  req.max_tokens = absl::GetFlag(FLAGS_decode_steps) + 1;
  req.stop_at_eos = false;
  moe::Generate(model, {req}).IgnoreError();  // warm-up: page in every weight once
  moe::GenerationStats stats;
  auto result = moe::Generate(model, {req}, &stats);
  if (!result.ok()) {
    std::cerr << result.status() << "\n";
    return 1;
  }
  const double prefill_tps = stats.prompt_tokens / stats.prefill_seconds;
  const double decode_tps = stats.decode_steps / stats.decode_seconds;
  const double roofline = read_bw * 1e9 / active;

  std::cout << absl::StrFormat("checkpoint: %s (%.2f GB on disk), %d threads\n", dir, file_bytes / 1e9, pool.num_threads());
  std::cout << absl::StrFormat("machine: read bandwidth %.1f GB/s, memcpy %.1f GB/s (measured now)\n", read_bw, memcpy_bw);
  std::cout << absl::StrFormat("active weight bytes per decoded token: %.1f MB -> roofline %.1f tokens/s\n", active / 1e6, roofline);
  std::cout << "| engine | prefill tokens/s | decode tokens/s | decode % of roofline |\n|---|---|---|---|\n";
  std::cout << absl::StrFormat("| moe (C++) | %.1f | %.2f | %.0f%% |\n", prefill_tps, decode_tps, 100 * decode_tps / roofline);
  if (absl::GetFlag(FLAGS_torch)) {
    const std::string cmd = absl::StrFormat(
        "%s tools/hf_reference.py bench --model %s --prompt-len %d --batch 1 --decode-steps %d --threads %d",
        absl::GetFlag(FLAGS_python), dir, absl::GetFlag(FLAGS_prompt_len), absl::GetFlag(FLAGS_decode_steps),
        pool.num_threads());
    const std::string out = RunCommand(cmd);
    auto j = nlohmann::json::parse(out, nullptr, false);
    if (j.is_discarded() || !j.contains("decode_tokens_per_s")) {
      std::cout << "PyTorch reference failed: " << out << "\n";
      return 1;
    }
    const double tp = j["prefill_tokens_per_s"].get<double>(), td = j["decode_tokens_per_s"].get<double>();
    std::cout << absl::StrFormat("| PyTorch reference (F32 compute) | %.1f | %.2f | %.0f%% |\n", tp, td, 100 * td / roofline);
    std::cout << absl::StrFormat("ratio C++ / PyTorch: prefill %.2fx, decode %.2fx (this torch build: %.1f GFLOP/s on a "
                                 "64-row F32 linear, %d threads)\n",
                                 prefill_tps / tp, decode_tps / td, j.value("torch_linear_gflops", 0.0),
                                 j.value("torch_threads", 0));
  }
  return 0;
}
