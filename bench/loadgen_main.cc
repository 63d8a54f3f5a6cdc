// moe-loadgen: load generator for the cluster. For each worker count it starts a local cluster
// (cluster/run-local), sends --requests streaming requests from --concurrency clients, and prints
// throughput and TTFT / inter-token latency percentiles, beside the single-process engine running the
// same prompts in batches of --concurrency (the cost of distribution, as a ratio).
//   build/bin/moe-loadgen --model DIR [--workers 1,2,4] [--concurrency 16] [--requests 64]
//                         [--prompt-len 16] [--max-tokens 32] [--threads 1] [--ignore-eos]
//   build/bin/moe-loadgen --model DIR --server HOST:PORT [...]   (a running cluster, no engine baseline)
#include <algorithm>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "bench/load_client.h"
#include "cluster/local_cluster.h"
#include "common/flags.h"
#include "engine/generator.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(std::vector<std::string>, workers, std::vector<std::string>({"1", "2", "4"}), "worker counts");
ABSL_FLAG(int32_t, concurrency, 16, "concurrent clients");
ABSL_FLAG(int32_t, requests, 64, "requests per configuration");
ABSL_FLAG(int32_t, prompt_len, 16, "prompt tokens");
ABSL_FLAG(int32_t, max_tokens, 32, "tokens per answer");
ABSL_FLAG(bool, ignore_eos, false, "answers of exactly --max-tokens tokens (the end-of-sequence token does not stop them)");
ABSL_FLAG(std::string, server, "",
          "load this running cluster (HOST:PORT: launched by mpirun, Slurm or by hand) instead of starting local ones");
ABSL_FLAG(int32_t, threads, 1, "compute threads per worker (and for the engine baseline)");
ABSL_FLAG(std::string, task, "", "with --server: every request on this task's expert map (the cluster must have it loaded)");

namespace {

using Clock = std::chrono::steady_clock;
using moe::bench::Quantile;

struct RunStats {
  double tokens_per_s = 0, ttft_p50 = 0, ttft_p99 = 0, itl_p50 = 0, itl_p99 = 0;
  int64_t tokens = 0, failures = 0, all2all_bytes = 0;
};

RunStats LoadCluster(const std::string& address, const std::vector<std::vector<int32_t>>& prompts, int concurrency,
                     int max_tokens) {
  const moe::bench::LoadResult load =
      moe::bench::RunClosedLoop(address, prompts, concurrency,
                                {max_tokens, absl::GetFlag(FLAGS_task), absl::GetFlag(FLAGS_ignore_eos)});
  std::vector<double> ttft;
  for (const auto& r : load.answered) {
    if (r.output_tokens > 0) ttft.push_back(r.ttft_s);
  }
  RunStats s;
  s.tokens = load.tokens();
  s.failures = load.failures;
  s.all2all_bytes = load.all2all_bytes;
  s.tokens_per_s = load.tokens_per_s();
  s.ttft_p50 = Quantile(ttft, 0.5);
  s.ttft_p99 = Quantile(ttft, 0.99);
  s.itl_p50 = Quantile(load.token_gaps_s, 0.5);
  s.itl_p99 = Quantile(load.token_gaps_s, 0.99);
  return s;
}

absl::StatusOr<RunStats> RunEngine(const std::string& dir, const std::vector<std::vector<int32_t>>& prompts,
                                   int concurrency, int max_tokens, int threads) {
  moe::ThreadPool pool(threads);
  auto source = moe::ModelSource::Open(dir);
  if (!source.ok()) return source.status();
  auto weights = moe::LoadModelWeights(std::move(*source), {}, &pool);
  if (!weights.ok()) return weights.status();
  moe::Model model(std::move(*weights), &pool);
  RunStats s;
  std::vector<double> ttft, itl;
  const auto start = Clock::now();
  for (size_t b = 0; b < prompts.size(); b += static_cast<size_t>(concurrency)) {
    std::vector<moe::GenerationRequest> batch;
    for (size_t i = b; i < std::min(prompts.size(), b + concurrency); ++i) {
      moe::GenerationRequest request;
      request.prompt = prompts[i];
      request.max_tokens = max_tokens;
      request.stop_at_eos = !absl::GetFlag(FLAGS_ignore_eos);
      batch.push_back(std::move(request));
    }
    moe::GenerationStats st;
    auto results = moe::Generate(model, batch, &st);
    if (!results.ok()) return results.status();
    for (const auto& r : *results) s.tokens += static_cast<int64_t>(r.tokens.size());
    for (size_t i = 0; i < batch.size(); ++i) ttft.push_back(st.prefill_seconds);
    if (st.decode_steps > 0) itl.push_back(st.decode_seconds / static_cast<double>(st.decode_steps));
  }
  s.tokens_per_s = static_cast<double>(s.tokens) / std::chrono::duration<double>(Clock::now() - start).count();
  s.ttft_p50 = Quantile(ttft, 0.5);
  s.ttft_p99 = Quantile(ttft, 0.99);
  s.itl_p50 = Quantile(itl, 0.5);
  s.itl_p99 = Quantile(itl, 0.99);
  return s;
}

std::string Row(const std::string& name, const RunStats& s, double engine_tps) {
  return absl::StrFormat("| %s | %.1f | %.1f | %.1f | %.2f | %.2f | %.2f | %d |", name, s.tokens_per_s, s.ttft_p50 * 1e3,
                         s.ttft_p99 * 1e3, s.itl_p50 * 1e3, s.itl_p99 * 1e3, engine_tps > 0 ? s.tokens_per_s / engine_tps : 1.0,
                         s.failures);
}

}  // namespace

int main(int argc, char** argv) {
  moe::ParseFlags(argc, argv);
  const std::string dir = absl::GetFlag(FLAGS_model);
  if (dir.empty()) {
    std::cerr << "moe-loadgen: --model is required\n";
    return 1;
  }
  auto config = moe::ModelConfig::FromFile(dir + "/config.json");
  if (!config.ok()) {
    std::cerr << "moe-loadgen: " << config.status() << "\n";
    return 1;
  }
  const int concurrency = absl::GetFlag(FLAGS_concurrency), max_tokens = absl::GetFlag(FLAGS_max_tokens);
  const std::vector<std::vector<int32_t>> prompts = moe::bench::RandomPrompts(
      config->vocab_size, config->bos_token_id, absl::GetFlag(FLAGS_requests), absl::GetFlag(FLAGS_prompt_len));
  std::cout << absl::StrFormat("model %s; %d requests, concurrency %d, prompt %d tokens, up to %d new tokens, %d thread(s) per process\n",
                               dir, prompts.size(), concurrency, absl::GetFlag(FLAGS_prompt_len), max_tokens, absl::GetFlag(FLAGS_threads));
  std::cout << "| setup | tokens/s | TTFT p50 ms | TTFT p99 ms | per-token p50 ms | per-token p99 ms | vs engine | failed |\n"
               "|---|---|---|---|---|---|---|---|\n";
  if (const std::string server = absl::GetFlag(FLAGS_server); !server.empty()) {
    const RunStats s = LoadCluster(server, prompts, concurrency, max_tokens);
    std::cout << Row("cluster at " + server, s, 0)
              << absl::StrFormat(" all2all %.1f KB/token", s.tokens ? s.all2all_bytes / 1e3 / s.tokens : 0.0) << std::endl;
    return s.failures > 0 ? 1 : 0;
  }
  if (!absl::GetFlag(FLAGS_task).empty()) {
    std::cerr << "moe-loadgen: --task needs --server (the local clusters it starts have no expert maps)\n";
    return 1;
  }
  auto engine = RunEngine(dir, prompts, concurrency, max_tokens, absl::GetFlag(FLAGS_threads));
  if (!engine.ok()) {
    std::cerr << "moe-loadgen: " << engine.status() << "\n";
    return 1;
  }
  std::cout << Row("single-process engine", *engine, 0) << std::endl;
  for (const std::string& w : absl::GetFlag(FLAGS_workers)) {
    const int workers = std::stoi(w);
    auto cluster = moe::LocalCluster::Start(dir, workers, {}, std::chrono::seconds(180),
                                            {"--threads", std::to_string(absl::GetFlag(FLAGS_threads))});
    if (!cluster.ok()) {
      std::cerr << "moe-loadgen: " << cluster.status() << "\n";
      return 1;
    }
    LoadCluster((*cluster)->address(), {prompts[0]}, 1, 2);  // warm-up
    RunStats s = LoadCluster((*cluster)->address(), prompts, concurrency, max_tokens);
    std::cout << Row(absl::StrCat("cluster, ", workers, " worker", workers > 1 ? "s" : ""), s, engine->tokens_per_s)
              << absl::StrFormat(" all2all %.1f KB/token", s.tokens ? s.all2all_bytes / 1e3 / s.tokens : 0.0) << std::endl;
    if (!(*cluster)->Stop().ok()) std::cerr << "moe-loadgen: cluster did not stop cleanly\n";
  }
  return 0;
}
