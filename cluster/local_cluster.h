// A real local cluster started by one of the launch scripts (cluster/run-local: coordinator + N
// worker processes on loopback; cluster/run-mpi: the same under mpirun with an MPI data plane), in
// its own session and torn down with SIGTERM, every wait bounded by a deadline.
#ifndef MOE_CLUSTER_LOCAL_CLUSTER_H_
#define MOE_CLUSTER_LOCAL_CLUSTER_H_

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moe {

class LocalCluster {
 public:
  // Starts cluster/<launcher> and waits (up to `timeout`) for "listening on ADDR" and the metrics line.
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(const std::string& model_dir, int workers,
                                                             const std::vector<std::string>& coordinator_flags = {},
                                                             std::chrono::seconds timeout = std::chrono::seconds(120),
                                                             const std::vector<std::string>& launcher_flags = {},
                                                             const std::string& launcher = "run-local");
  ~LocalCluster();

  const std::string& address() const { return address_; }
  const std::string& metrics_url() const { return metrics_url_; }
  // Where workers register (the coordinator's control plane).
  const std::string& control_address() const { return control_address_; }
  // The worker processes run-local started, in start order.
  const std::vector<int>& worker_pids() const { return worker_pids_; }
  // Starts one more moe-worker (e.g. a dead worker coming back); Stop also stops it.
  absl::StatusOr<int> StartWorker(const std::string& model_dir);
  // Sends SIGTERM to the launcher and waits for it; returns OK when it exited and no process of its
  // session is left.
  absl::Status Stop(std::chrono::seconds timeout = std::chrono::seconds(20));

 private:
  LocalCluster() = default;
  int pid_ = -1;
  int stdout_fd_ = -1;
  bool stopped_ = false;
  std::string launcher_, address_, metrics_url_, control_address_;
  std::vector<int> worker_pids_;
  std::vector<int> extra_worker_pids_;
};

// GET http://host:port/path over loopback; the body, or an error. Bounded by `timeout`.
absl::StatusOr<std::string> HttpGet(const std::string& url, std::chrono::milliseconds timeout);

// The value of one series ("name{labels}", exactly as the coordinator's /metrics writes it) in a
// Prometheus text page, or -1 when absent or not a number.
double MetricValue(const std::string& metrics, const std::string& series);

}  // namespace moe

#endif  // MOE_CLUSTER_LOCAL_CLUSTER_H_
