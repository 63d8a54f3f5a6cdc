#include "bench/load_client.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "grpcpp/grpcpp.h"
#include "moe/v1/inference.grpc.pb.h"
#include "proto/grpc_util.h"

namespace moe::bench {

using Clock = std::chrono::steady_clock;

int64_t LoadResult::tokens() const {
  int64_t n = 0;
  for (const RequestTiming& r : answered) n += r.output_tokens;
  return n;
}

double LoadResult::mean_inter_token_s() const {
  double decode_s = 0;
  int64_t gaps = 0;
  for (const RequestTiming& r : answered) {
    if (r.output_tokens < 2) continue;
    decode_s += r.last_token_s - r.ttft_s;
    gaps += r.output_tokens - 1;
  }
  return gaps ? decode_s / static_cast<double>(gaps) : 0;
}

namespace {
double MeanOver(const std::vector<RequestTiming>& answered, double RequestTiming::*figure) {
  double sum = 0;
  for (const RequestTiming& r : answered) sum += r.*figure;
  return answered.empty() ? 0 : sum / static_cast<double>(answered.size());
}
}  // namespace

double LoadResult::mean_ttft_s() const { return MeanOver(answered, &RequestTiming::ttft_s); }
double LoadResult::mean_close_s() const { return MeanOver(answered, &RequestTiming::close_s); }

LoadResult AnsweredInFull(const std::vector<std::vector<int32_t>>& prompts, int max_tokens) {
  LoadResult load;
  for (const std::vector<int32_t>& prompt : prompts) load.answered.push_back({static_cast<int64_t>(prompt.size()), max_tokens});
  return load;
}

std::vector<std::vector<int32_t>> RandomPrompts(int64_t vocab_size, int64_t bos_token_id, int count, int length,
                                                uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(count));
  for (auto& p : prompts) {
    p.push_back(static_cast<int32_t>(std::max<int64_t>(bos_token_id, 0)));
    for (int i = 1; i < length; ++i) p.push_back(3 + static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab_size - 3)));
  }
  return prompts;
}

double Quantile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1, static_cast<size_t>(q * static_cast<double>(values.size())))];
}

LoadResult RunClosedLoop(const std::string& address, const std::vector<std::vector<int32_t>>& prompts, int concurrency,
                         const RequestOptions& options) {
  auto stub = v1::Inference::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  std::atomic<size_t> next{0};
  struct PerClient {
    std::vector<RequestTiming> answered;
    std::vector<double> gaps;
    int64_t failures = 0, bytes = 0;
  };
  std::vector<PerClient> clients(static_cast<size_t>(concurrency));
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < concurrency; ++c) {
    threads.emplace_back([&, c] {
      PerClient& me = clients[c];
      for (size_t i = next++; i < prompts.size(); i = next++) {
        v1::GenerateRequest req;
        *req.mutable_prompt_token_ids() = {prompts[i].begin(), prompts[i].end()};
        req.set_max_tokens(options.max_tokens);
        req.set_task(options.task);
        req.set_ignore_eos(options.ignore_eos);
        grpc::ClientContext ctx;
        ctx.set_deadline(DeadlineAfter(std::chrono::minutes(5)));
        const auto t0 = Clock::now();
        auto last = t0;
        RequestTiming timing;
        timing.prompt_tokens = static_cast<int64_t>(prompts[i].size());
        auto reader = stub->Generate(&ctx, req);
        v1::GenerateResponse r;
        while (reader->Read(&r)) {
          const auto now = Clock::now();
          for (int k = 0; k < r.token_ids_size(); ++k) {
            if (timing.output_tokens++ == 0) timing.ttft_s = std::chrono::duration<double>(now - t0).count();
            else me.gaps.push_back(std::chrono::duration<double>(now - last).count());
            last = now;
          }
          me.bytes += r.usage().all2all_bytes();
        }
        timing.last_token_s = std::chrono::duration<double>(last - t0).count();
        timing.end_to_end_s = std::chrono::duration<double>(Clock::now() - t0).count();
        const bool ok = reader->Finish().ok();
        timing.close_s = std::chrono::duration<double>(Clock::now() - last).count();
        if (ok) me.answered.push_back(timing);
        else ++me.failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  LoadResult result;
  result.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  for (PerClient& c : clients) {
    result.answered.insert(result.answered.end(), c.answered.begin(), c.answered.end());
    result.token_gaps_s.insert(result.token_gaps_s.end(), c.gaps.begin(), c.gaps.end());
    result.failures += c.failures;
    result.all2all_bytes += c.bytes;
  }
  return result;
}

}  // namespace moe::bench
