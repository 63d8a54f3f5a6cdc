// The coordinator's Prometheus metrics and a minimal HTTP endpoint serving them (GET /metrics).
#ifndef MOE_COORDINATOR_METRICS_H_
#define MOE_COORDINATOR_METRICS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace moe {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);
  // Prometheus text exposition of this histogram under `name`.
  std::string Render(const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  mutable absl::Mutex mutex_;
  std::vector<int64_t> counts_ ABSL_GUARDED_BY(mutex_);
  double sum_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t total_ ABSL_GUARDED_BY(mutex_) = 0;
};

// Everything the coordinator exports. Thread-safe.
class ClusterMetrics {
 public:
  ClusterMetrics(int num_layers, int num_experts, int num_workers);

  Histogram ttft_seconds;
  Histogram inter_token_seconds;
  // The engine loop's cadence: a step from its admission to its results (the workers' Step RPCs), and
  // the gap from one step's results to the next step's admission when sequences were still running
  // (the coordinator's own per-step work: handing out the tokens, admitting, building the requests).
  Histogram step_seconds;
  Histogram prefill_step_seconds;  // the steps among those that prefilled at least one sequence
  Histogram step_gap_seconds;
  std::atomic<int64_t> requests_total{0};
  std::atomic<int64_t> requests_rejected{0};
  std::atomic<int64_t> tokens_generated{0};
  std::atomic<int64_t> layers_executed{0};  // decoder layers run by generated tokens (layer routing)
  std::atomic<int64_t> prompt_tokens{0};
  std::atomic<int64_t> queue_depth{0};
  std::atomic<int64_t> running{0};
  std::atomic<int64_t> steps{0};
  std::atomic<int64_t> prefill_steps{0};        // steps that prefilled at least one sequence (and succeeded)
  std::atomic<int64_t> prefilled_sequences{0};  // sequences those steps prefilled (new and resumed)
  std::atomic<int64_t> prefill_rows{0};         // their prompt rows beyond one per sequence
  std::atomic<int64_t> workers_alive{0};
  std::atomic<int64_t> shard_map_epoch{0};
  std::atomic<int64_t> worker_failures{0};   // workers declared dead
  std::atomic<int64_t> reconfigurations{0};  // shard maps installed
  std::atomic<int64_t> resumed_requests{0};  // in-flight requests re-prefilled on a new shard map

  // Adds one worker's step report. Workers are registration slots (stable across shard maps);
  // per_peer is indexed by slot too. forward_ns: the worker's forward pass, exchange_ns: of which in
  // the all-to-all (the rest is its own work: over time, how busy each worker is).
  void AddStepTraffic(int worker, const std::vector<int64_t>& per_layer, const std::vector<int64_t>& per_peer,
                      const std::vector<int64_t>& expert_tokens, int64_t generated_tokens, int64_t forward_ns,
                      int64_t exchange_ns);
  // One generated token of a request served through task expert map `task` ("" = the full model), and
  // the All2All bytes its step moved.
  void AddTaskToken(const std::string& task, int64_t all2all_bytes);
  // Whether registration slot `worker` holds a live member.
  void SetWorkerUp(int worker, bool up);
  std::string Render() const;

 private:
  int num_layers_, num_experts_, num_workers_;
  const double start_seconds_;
  mutable absl::Mutex mutex_;
  std::vector<int64_t> layer_bytes_ ABSL_GUARDED_BY(mutex_);
  std::vector<int64_t> pair_bytes_ ABSL_GUARDED_BY(mutex_);    // [from * workers + to]
  std::vector<int64_t> expert_tokens_ ABSL_GUARDED_BY(mutex_); // [layer * experts + expert]
  std::vector<int64_t> worker_tokens_ ABSL_GUARDED_BY(mutex_); // tokens generated for sequences on each worker
  std::vector<int64_t> worker_up_ ABSL_GUARDED_BY(mutex_);
  std::vector<int64_t> worker_forward_ns_ ABSL_GUARDED_BY(mutex_);   // each worker's forward passes
  std::vector<int64_t> worker_exchange_ns_ ABSL_GUARDED_BY(mutex_);  // of which in the all-to-all
  struct TaskTraffic {
    int64_t tokens = 0, all2all_bytes = 0;
  };
  std::map<std::string, TaskTraffic> task_traffic_ ABSL_GUARDED_BY(mutex_);
};

// Serves GET /metrics with `render()` on a loopback-or-any port; one connection at a time.
class MetricsHttpServer {
 public:
  ~MetricsHttpServer();
  // Binds host:port (port 0 picks one) and starts serving; returns the port.
  absl::StatusOr<int> Start(const std::string& host, int port, std::function<std::string()> render);
  void Stop();

 private:
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace moe

#endif  // MOE_COORDINATOR_METRICS_H_
