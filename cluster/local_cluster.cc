#include "cluster/local_cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace moe {

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(const std::string& model_dir, int workers,
                                                                   const std::vector<std::string>& flags,
                                                                   std::chrono::seconds timeout,
                                                                   const std::vector<std::string>& launcher_flags,
                                                                   const std::string& launcher) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  std::vector<std::string> args = {std::string(MOE_SOURCE_DIR) + "/cluster/" + launcher, "--workers", std::to_string(workers),
                                   "--model", model_dir, "--port", "0"};
  args.insert(args.end(), launcher_flags.begin(), launcher_flags.end());
  if (!flags.empty()) {
    args.push_back("--");
    args.insert(args.end(), flags.begin(), flags.end());
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDOUT_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);  // its own session: teardown can check it is empty
  std::unique_ptr<LocalCluster> c(new LocalCluster());
  c->launcher_ = launcher;
  std::string bin_env = std::string("MOE_BIN=") + MOE_BINARY_DIR + "/bin";
  std::vector<char*> env;
  for (char** e = environ; *e != nullptr; ++e) env.push_back(*e);
  env.push_back(bin_env.data());
  env.push_back(nullptr);
  const int rc = posix_spawn(&c->pid_, argv[0], &actions, &attr, argv.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(pipe_fds[1]);
  if (rc != 0) {
    ::close(pipe_fds[0]);
    return absl::InternalError(absl::StrCat("cannot start ", launcher, ": ", std::strerror(rc)));
  }
  c->stdout_fd_ = pipe_fds[0];
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string buffer;
  while (c->address_.empty() || c->metrics_url_.empty()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return absl::DeadlineExceededError("the cluster did not start in time; output: " + buffer);
    pollfd p{c->stdout_fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char chunk[4096];
    const ssize_t n = ::read(c->stdout_fd_, chunk, sizeof chunk);
    if (n <= 0) return absl::UnavailableError(launcher + " exited during start-up; output: " + buffer);
    buffer.append(chunk, static_cast<size_t>(n));
    for (absl::string_view line : absl::StrSplit(buffer, '\n')) {
      if (absl::ConsumePrefix(&line, "listening on ")) c->address_ = std::string(line);
      if (absl::ConsumePrefix(&line, "metrics on ")) c->metrics_url_ = std::string(line);
      if (absl::ConsumePrefix(&line, "control plane on ")) c->control_address_ = std::string(line);
      int pid = 0;
      if (absl::ConsumePrefix(&line, "worker pid ") && absl::SimpleAtoi(line, &pid) &&
          std::find(c->worker_pids_.begin(), c->worker_pids_.end(), pid) == c->worker_pids_.end()) {
        c->worker_pids_.push_back(pid);
      }
    }
  }
  return c;
}

absl::StatusOr<int> LocalCluster::StartWorker(const std::string& model_dir) {
  std::vector<std::string> args = {std::string(MOE_BINARY_DIR) + "/bin/moe-worker", "--coordinator", control_address_,
                                   "--model", model_dir};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int pid = -1;
  const int rc = posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ);
  if (rc != 0) return absl::InternalError(absl::StrCat("cannot start moe-worker: ", std::strerror(rc)));
  extra_worker_pids_.push_back(pid);
  return pid;
}

absl::Status LocalCluster::Stop(std::chrono::seconds timeout) {
  if (stopped_) return absl::OkStatus();
  stopped_ = true;
  for (int pid : extra_worker_pids_) {  // outside run-local's session: stopped here, bounded like the rest
    ::kill(pid, SIGTERM);
    auto waited = std::async(std::launch::async, [pid] { return ::waitpid(pid, nullptr, 0) == pid; });
    if (waited.wait_for(timeout) != std::future_status::ready) ::kill(pid, SIGKILL);
    waited.wait();
  }
  ::kill(pid_, SIGTERM);
  auto waited = std::async(std::launch::async, [pid = pid_] {
    int status = 0;
    return ::waitpid(pid, &status, 0) == pid;
  });
  absl::Status result;
  if (waited.wait_for(timeout) != std::future_status::ready) {
    ::kill(-pid_, SIGKILL);
    result = absl::DeadlineExceededError(launcher_ + " did not stop within the deadline");
  }
  waited.wait();
  // Every process of the session must be gone (workers and coordinator included).
  if (result.ok() && ::kill(-pid_, 0) == 0) {
    ::kill(-pid_, SIGKILL);
    result = absl::InternalError("processes of the cluster outlived " + launcher_);
  }
  if (stdout_fd_ >= 0) ::close(stdout_fd_);
  stdout_fd_ = -1;
  return result;
}

LocalCluster::~LocalCluster() { Stop().IgnoreError(); }

absl::StatusOr<std::string> HttpGet(const std::string& url, std::chrono::milliseconds timeout) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "http://")) return absl::InvalidArgumentError("not an http:// url: " + url);
  const size_t slash = rest.find('/');
  const std::string hostport(rest.substr(0, slash)), path(slash == absl::string_view::npos ? "/" : rest.substr(slash));
  const size_t colon = hostport.rfind(':');
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(hostport.substr(colon + 1))));
  ::inet_pton(AF_INET, hostport.substr(0, colon).c_str(), &addr.sin_addr);
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return absl::UnavailableError("cannot connect to " + hostport);
  }
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: " + hostport + "\r\nConnection: close\r\n\r\n";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string response;
  char buf[8192];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) response.append(buf, static_cast<size_t>(n));
  ::close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (body == std::string::npos) return absl::DataLossError("no HTTP response from " + url);
  return response.substr(body + 4);
}

double MetricValue(const std::string& metrics, const std::string& series) {
  const std::string page = "\n" + metrics;
  const size_t at = page.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  const size_t begin = at + series.size() + 2;
  const size_t end = page.find('\n', begin);
  double value = -1;
  if (!absl::SimpleAtod(absl::string_view(page).substr(begin, end == std::string::npos ? end : end - begin), &value)) {
    return -1;
  }
  return value;
}

}  // namespace moe
