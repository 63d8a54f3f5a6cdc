// moe-loadgen: load generator for the cluster. For each worker count it starts a local cluster
// (cluster/run-local), sends --requests streaming requests from --concurrency clients, and prints
// throughput and TTFT / inter-token latency percentiles, beside the single-process engine running the
// same prompts in batches of --concurrency (the cost of distribution, as a ratio).
//   build/bin/moe-loadgen --model DIR [--workers 1,2,4] [--concurrency 16] [--requests 64]
//                         [--prompt-len 16] [--max-tokens 32] [--threads 1]
#include <algorithm>
#include <atomic>
#include <iostream>
#include <random>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "cluster/local_cluster.h"
#include "common/flags.h"
#include "engine/generator.h"
#include "grpcpp/grpcpp.h"
#include "moe/v1/inference.grpc.pb.h"
#include "proto/grpc_util.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(std::vector<std::string>, workers, std::vector<std::string>({"1", "2", "4"}), "worker counts");
ABSL_FLAG(int32_t, concurrency, 16, "concurrent clients");
ABSL_FLAG(int32_t, requests, 64, "requests per configuration");
ABSL_FLAG(int32_t, prompt_len, 16, "prompt tokens");
ABSL_FLAG(int32_t, max_tokens, 32, "tokens per answer");
ABSL_FLAG(int32_t, threads, 1, "compute threads per worker (and for the engine baseline)");

namespace {

using Clock = std::chrono::steady_clock;

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

struct RunStats {
  double tokens_per_s = 0, ttft_p50 = 0, ttft_p99 = 0, itl_p50 = 0, itl_p99 = 0;
  int64_t tokens = 0, failures = 0, all2all_bytes = 0;
};

RunStats LoadCluster(const std::string& address, const std::vector<std::vector<int32_t>>& prompts, int concurrency,
                     int max_tokens) {
  auto stub = moe::v1::Inference::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  std::atomic<size_t> next{0};
  std::vector<std::vector<double>> ttft(concurrency), itl(concurrency);
  std::vector<int64_t> tokens(concurrency, 0), failures(concurrency, 0), bytes(concurrency, 0);
  const auto start = Clock::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < concurrency; ++c) {
    clients.emplace_back([&, c] {
      for (size_t i = next++; i < prompts.size(); i = next++) {
        moe::v1::GenerateRequest req;
        *req.mutable_prompt_token_ids() = {prompts[i].begin(), prompts[i].end()};
        req.set_max_tokens(max_tokens);
        grpc::ClientContext ctx;
        ctx.set_deadline(moe::DeadlineAfter(std::chrono::minutes(5)));
        const auto t0 = Clock::now();
        auto last = t0;
        auto reader = stub->Generate(&ctx, req);
        moe::v1::GenerateResponse r;
        bool first = true;
        while (reader->Read(&r)) {
          const auto now = Clock::now();
          for (int k = 0; k < r.token_ids_size(); ++k) {
            (first ? ttft[c] : itl[c]).push_back(std::chrono::duration<double>(now - (first ? t0 : last)).count());
            first = false;
            last = now;
            ++tokens[c];
          }
          bytes[c] += r.usage().all2all_bytes();
        }
        if (!reader->Finish().ok()) ++failures[c];
      }
    });
  }
  for (auto& t : clients) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  RunStats s;
  std::vector<double> all_ttft, all_itl;
  for (int c = 0; c < concurrency; ++c) {
    all_ttft.insert(all_ttft.end(), ttft[c].begin(), ttft[c].end());
    all_itl.insert(all_itl.end(), itl[c].begin(), itl[c].end());
    s.tokens += tokens[c];
    s.failures += failures[c];
    s.all2all_bytes += bytes[c];
  }
  s.tokens_per_s = static_cast<double>(s.tokens) / wall;
  s.ttft_p50 = Percentile(all_ttft, 0.5);
  s.ttft_p99 = Percentile(all_ttft, 0.99);
  s.itl_p50 = Percentile(all_itl, 0.5);
  s.itl_p99 = Percentile(all_itl, 0.99);
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
    for (size_t i = b; i < std::min(prompts.size(), b + concurrency); ++i) batch.push_back({prompts[i], max_tokens, {}, true});
    moe::GenerationStats st;
    auto results = moe::Generate(model, batch, &st);
    if (!results.ok()) return results.status();
    for (const auto& r : *results) s.tokens += static_cast<int64_t>(r.tokens.size());
    for (size_t i = 0; i < batch.size(); ++i) ttft.push_back(st.prefill_seconds);
    if (st.decode_steps > 0) itl.push_back(st.decode_seconds / static_cast<double>(st.decode_steps));
  }
  s.tokens_per_s = static_cast<double>(s.tokens) / std::chrono::duration<double>(Clock::now() - start).count();
  s.ttft_p50 = Percentile(ttft, 0.5);
  s.ttft_p99 = Percentile(ttft, 0.99);
  s.itl_p50 = Percentile(itl, 0.5);
  s.itl_p99 = Percentile(itl, 0.99);
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
  std::mt19937 rng(42);
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(absl::GetFlag(FLAGS_requests)));
  for (auto& p : prompts) {
    p.push_back(static_cast<int32_t>(std::max<int64_t>(config->bos_token_id, 0)));
    for (int i = 1; i < absl::GetFlag(FLAGS_prompt_len); ++i) p.push_back(3 + static_cast<int32_t>(rng() % (config->vocab_size - 3)));
  }
  std::cout << absl::StrFormat("model %s; %d requests, concurrency %d, prompt %d tokens, up to %d new tokens, %d thread(s) per process\n",
                               dir, prompts.size(), concurrency, absl::GetFlag(FLAGS_prompt_len), max_tokens, absl::GetFlag(FLAGS_threads));
  std::cout << "| setup | tokens/s | TTFT p50 ms | TTFT p99 ms | per-token p50 ms | per-token p99 ms | vs engine | failed |\n"
               "|---|---|---|---|---|---|---|---|\n";
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
