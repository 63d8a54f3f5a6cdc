// A closed-loop load generator against a running cluster's Inference service: `concurrency` client
// threads, each streaming one request at a time until every prompt has been sent. What moe-loadgen
// and moe-bench-sim-live measure.
#ifndef MOE_BENCH_LOAD_CLIENT_H_
#define MOE_BENCH_LOAD_CLIENT_H_

#include <cstdint>
#include <string>
#include <vector>

namespace moe::bench {

// One answered request, as its client saw it.
struct RequestTiming {
  int64_t prompt_tokens = 0, output_tokens = 0;
  double ttft_s = 0;        // send to first token
  double last_token_s = 0;  // send to the last token
  double end_to_end_s = 0;  // send to the stream's end
  // From the last token's arrival to Finish's return (the stream's close and its status), after which
  // a closed-loop client sends its next request.
  double close_s = 0;
};

struct LoadResult {
  double wall_s = 0;
  std::vector<RequestTiming> answered;  // the requests that finished OK, in no particular order
  std::vector<double> token_gaps_s;     // between consecutive tokens of a stream (tokens in one message: 0)
  int64_t failures = 0, all2all_bytes = 0;

  int64_t tokens() const;
  double tokens_per_s() const { return wall_s > 0 ? static_cast<double>(tokens()) / wall_s : 0; }
  // Decode time per token: sum over requests of (last_token - ttft) / sum of (output_tokens - 1). Unlike
  // the gaps' percentiles, it does not depend on how the server groups tokens into messages.
  double mean_inter_token_s() const;
  double mean_ttft_s() const;   // over the answered requests
  double mean_close_s() const;  // over the answered requests (RequestTiming::close_s)
};

// What each request asks for besides its prompt.
struct RequestOptions {
  int max_tokens = 16;
  std::string task;         // expert map; empty: the full model
  bool ignore_eos = false;  // answers of exactly max_tokens tokens
};

// Every wait is bounded: each call has a 5-minute deadline.
LoadResult RunClosedLoop(const std::string& address, const std::vector<std::vector<int32_t>>& prompts, int concurrency,
                         const RequestOptions& options);

// `count` prompts of `length` tokens: BOS, then token ids drawn uniformly past the special ones (0-2).
std::vector<std::vector<int32_t>> RandomPrompts(int64_t vocab_size, int64_t bos_token_id, int count, int length,
                                                uint32_t seed = 42);

// A load as it was asked: every prompt answered with exactly `max_tokens` tokens (ignore_eos), no
// timings; what the simulator needs to run the same requests (SimulateClosedLoop, bench/calibration.h).
LoadResult AnsweredInFull(const std::vector<std::vector<int32_t>>& prompts, int max_tokens);

// The q-quantile (nearest rank below) of `values`; 0 when empty.
double Quantile(std::vector<double> values, double q);

}  // namespace moe::bench

#endif  // MOE_BENCH_LOAD_CLIENT_H_
