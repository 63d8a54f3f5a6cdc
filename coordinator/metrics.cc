#include "coordinator/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe {
namespace {

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<double> LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
}

// Engine steps and the gaps between them: tens of microseconds to seconds.
std::vector<double> StepBuckets() {
  return {0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1};
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  absl::MutexLock lock(&mutex_);
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += value;
  ++total_;
}

std::string Histogram::Render(const std::string& name, const std::string& help) const {
  absl::MutexLock lock(&mutex_);
  std::string out = absl::StrCat("# HELP ", name, " ", help, "\n# TYPE ", name, " histogram\n");
  int64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    absl::StrAppend(&out, name, "_bucket{le=\"", bounds_[i], "\"} ", cumulative, "\n");
  }
  absl::StrAppend(&out, name, "_bucket{le=\"+Inf\"} ", total_, "\n", name, "_sum ", sum_, "\n", name, "_count ", total_, "\n");
  return out;
}

ClusterMetrics::ClusterMetrics(int num_layers, int num_experts, int num_workers)
    : ttft_seconds(LatencyBuckets()),
      inter_token_seconds(LatencyBuckets()),
      step_seconds(StepBuckets()),
      prefill_step_seconds(StepBuckets()),
      step_gap_seconds(StepBuckets()),
      num_layers_(num_layers),
      num_experts_(num_experts),
      num_workers_(num_workers),
      start_seconds_(NowSeconds()),
      layer_bytes_(static_cast<size_t>(num_layers), 0),
      pair_bytes_(static_cast<size_t>(num_workers * num_workers), 0),
      expert_tokens_(static_cast<size_t>(num_layers * num_experts), 0),
      worker_tokens_(static_cast<size_t>(num_workers), 0),
      worker_up_(static_cast<size_t>(num_workers), 0),
      worker_forward_ns_(static_cast<size_t>(num_workers), 0),
      worker_exchange_ns_(static_cast<size_t>(num_workers), 0) {}

void ClusterMetrics::AddTaskToken(const std::string& task, int64_t all2all_bytes) {
  absl::MutexLock lock(&mutex_);
  TaskTraffic& t = task_traffic_[task];
  ++t.tokens;
  t.all2all_bytes += all2all_bytes;
}

void ClusterMetrics::SetWorkerUp(int worker, bool up) {
  absl::MutexLock lock(&mutex_);
  if (worker >= 0 && worker < num_workers_) worker_up_[static_cast<size_t>(worker)] = up ? 1 : 0;
}

void ClusterMetrics::AddStepTraffic(int worker, const std::vector<int64_t>& per_layer,
                                    const std::vector<int64_t>& per_peer, const std::vector<int64_t>& expert_tokens,
                                    int64_t generated_tokens, int64_t forward_ns, int64_t exchange_ns) {
  absl::MutexLock lock(&mutex_);
  if (worker >= 0 && worker < num_workers_) {
    worker_tokens_[static_cast<size_t>(worker)] += generated_tokens;
    worker_forward_ns_[static_cast<size_t>(worker)] += forward_ns;
    worker_exchange_ns_[static_cast<size_t>(worker)] += exchange_ns;
  }
  for (size_t l = 0; l < per_layer.size() && l < layer_bytes_.size(); ++l) layer_bytes_[l] += per_layer[l];
  for (size_t p = 0; p < per_peer.size() && static_cast<int>(p) < num_workers_; ++p) {
    pair_bytes_[static_cast<size_t>(worker * num_workers_) + p] += per_peer[p];
  }
  for (size_t i = 0; i < expert_tokens.size() && i < expert_tokens_.size(); ++i) expert_tokens_[i] += expert_tokens[i];
}

std::string ClusterMetrics::Render() const {
  std::string out;
  out += ttft_seconds.Render("moe_time_to_first_token_seconds", "Time from request arrival to its first token.");
  out += inter_token_seconds.Render("moe_inter_token_seconds", "Time between consecutive tokens of a request.");
  out += step_seconds.Render("moe_engine_step_seconds", "Engine step, from its admission to the workers' results.");
  out += prefill_step_seconds.Render("moe_engine_prefill_step_seconds",
                                     "The engine steps (moe_engine_step_seconds) that prefilled at least one sequence.");
  out += step_gap_seconds.Render("moe_engine_step_gap_seconds",
                                 "From a step's results to the next step's admission, while sequences run.");
  auto counter = [&](const char* name, const char* help, int64_t v, const char* type = "counter") {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n", name, " ", v, "\n");
  };
  counter("moe_requests_total", "Requests accepted.", requests_total.load());
  counter("moe_requests_rejected_total", "Requests refused (invalid or over the limits).", requests_rejected.load());
  counter("moe_generated_tokens_total", "Tokens generated.", tokens_generated.load());
  counter("moe_layers_executed_total",
          "Decoder layers run by generated tokens (a skipped layer counts 0, a repeated one 2); divided by "
          "moe_generated_tokens_total: layers per token.",
          layers_executed.load());
  counter("moe_prompt_tokens_total", "Prompt tokens prefilled.", prompt_tokens.load());
  counter("moe_engine_steps_total", "Engine steps run.", steps.load());
  counter("moe_engine_prefill_steps_total", "Engine steps that prefilled at least one sequence.", prefill_steps.load());
  counter("moe_engine_prefilled_sequences_total",
          "Sequences prefilled (new and resumed); over moe_engine_prefill_steps_total: prompts per prefill step.",
          prefilled_sequences.load());
  counter("moe_engine_prefill_rows_total", "Prompt rows those steps prefilled beyond one per sequence.", prefill_rows.load());
  counter("moe_queue_depth", "Requests waiting for admission.", queue_depth.load(), "gauge");
  counter("moe_running_requests", "Requests in the running batch.", running.load(), "gauge");
  counter("moe_workers_alive", "Workers in the current shard map.", workers_alive.load(), "gauge");
  counter("moe_shard_map_epoch", "Epoch of the current shard map.", shard_map_epoch.load(), "gauge");
  counter("moe_worker_failures_total", "Workers declared dead (missed heartbeats or unreachable).", worker_failures.load());
  counter("moe_reconfigurations_total", "Shard maps installed (start-up, failures, returning workers).", reconfigurations.load());
  counter("moe_resumed_requests_total", "In-flight requests resumed on a new shard map.", resumed_requests.load());
  const double elapsed = std::max(1e-9, NowSeconds() - start_seconds_);
  absl::StrAppend(&out, "# HELP moe_tokens_per_second Generated tokens per second since start.\n",
                  "# TYPE moe_tokens_per_second gauge\nmoe_tokens_per_second ",
                  absl::StrFormat("%.3f", tokens_generated.load() / elapsed), "\n");
  absl::MutexLock lock(&mutex_);
  out += "# HELP moe_all2all_bytes_total All2All bytes sent between workers, by MoE layer.\n# TYPE moe_all2all_bytes_total counter\n";
  for (int l = 0; l < num_layers_; ++l) absl::StrAppend(&out, "moe_all2all_bytes_total{layer=\"", l, "\"} ", layer_bytes_[l], "\n");
  out += "# HELP moe_all2all_pair_bytes_total All2All bytes sent, by source and destination worker.\n# TYPE moe_all2all_pair_bytes_total counter\n";
  for (int a = 0; a < num_workers_; ++a) {
    for (int b = 0; b < num_workers_; ++b) {
      if (a == b) continue;
      absl::StrAppend(&out, "moe_all2all_pair_bytes_total{src=\"", a, "\",dst=\"", b, "\"} ", pair_bytes_[a * num_workers_ + b], "\n");
    }
  }
  out += "# HELP moe_task_generated_tokens_total Tokens generated, by task expert map (\"\" = full model).\n"
         "# TYPE moe_task_generated_tokens_total counter\n";
  for (const auto& [task, t] : task_traffic_) absl::StrAppend(&out, "moe_task_generated_tokens_total{task=\"", task, "\"} ", t.tokens, "\n");
  out += "# HELP moe_task_all2all_bytes_total All2All bytes moved by each task's tokens.\n"
         "# TYPE moe_task_all2all_bytes_total counter\n";
  for (const auto& [task, t] : task_traffic_) {
    absl::StrAppend(&out, "moe_task_all2all_bytes_total{task=\"", task, "\"} ", t.all2all_bytes, "\n");
  }
  out += "# HELP moe_worker_up Whether the worker slot holds a live member.\n# TYPE moe_worker_up gauge\n";
  for (int w = 0; w < num_workers_; ++w) absl::StrAppend(&out, "moe_worker_up{worker=\"", w, "\"} ", worker_up_[w], "\n");
  out += "# HELP moe_worker_generated_tokens_total Tokens generated for the sequences each worker runs.\n"
         "# TYPE moe_worker_generated_tokens_total counter\n";
  for (int w = 0; w < num_workers_; ++w) absl::StrAppend(&out, "moe_worker_generated_tokens_total{worker=\"", w, "\"} ", worker_tokens_[w], "\n");
  const auto per_worker_seconds = [&](const char* name, const char* help, const std::vector<int64_t>& ns) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " counter\n");
    for (int w = 0; w < num_workers_; ++w) {
      absl::StrAppend(&out, name, "{worker=\"", w, "\"} ", absl::StrFormat("%.9f", static_cast<double>(ns[w]) * 1e-9), "\n");
    }
  };
  per_worker_seconds("moe_worker_forward_seconds_total", "Each worker's forward passes (its steps, from the inputs to the logits).",
                     worker_forward_ns_);
  per_worker_seconds("moe_worker_exchange_seconds_total",
                     "Of those, the time in the all-to-all (sending, waiting for the peers, receiving); the rest is the "
                     "worker's own work.",
                     worker_exchange_ns_);
  out += "# HELP moe_expert_tokens_total Tokens computed by each expert.\n# TYPE moe_expert_tokens_total counter\n";
  for (int l = 0; l < num_layers_; ++l) {
    for (int e = 0; e < num_experts_; ++e) {
      const int64_t v = expert_tokens_[l * num_experts_ + e];
      if (v > 0) absl::StrAppend(&out, "moe_expert_tokens_total{layer=\"", l, "\",expert=\"", e, "\"} ", v, "\n");
    }
  }
  return out;
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

absl::StatusOr<int> MetricsHttpServer::Start(const std::string& host, int port, std::function<std::string()> render) {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return absl::InternalError("metrics: socket failed");
  int one = 1;
  ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) return absl::InvalidArgumentError("metrics: bad host " + host);
  if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd_, 16) != 0) {
    return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", host, ":", port, ": ", std::strerror(errno)));
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  thread_ = std::thread([this, render = std::move(render)] {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;  // wakes to check stop_
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      timeval tv{2, 0};
      ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      char buf[2048];
      const ssize_t n = ::recv(c, buf, sizeof buf - 1, 0);
      std::string request(buf, n > 0 ? static_cast<size_t>(n) : 0);
      std::string body, status = "200 OK";
      if (request.rfind("GET /metrics", 0) == 0) body = render();
      else status = "404 Not Found", body = "GET /metrics\n";
      const std::string response = absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: text/plain; version=0.0.4\r\n",
                                                "Content-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
      size_t sent = 0;
      while (sent < response.size()) {
        const ssize_t w = ::send(c, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
        if (w <= 0) break;
        sent += static_cast<size_t>(w);
      }
      ::close(c);
    }
  });
  return static_cast<int>(ntohs(addr.sin_port));
}

void MetricsHttpServer::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

}  // namespace moe
