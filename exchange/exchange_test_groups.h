// Test support: groups of Exchange members of each backend that can run inside one test process.
// Used by the Exchange test suite and by tests of code above the seam.
#ifndef MOE_EXCHANGE_EXCHANGE_TEST_GROUPS_H_
#define MOE_EXCHANGE_EXCHANGE_TEST_GROUPS_H_

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "exchange/grpc_exchange.h"
#include "exchange/in_process_exchange.h"
#include "proto/grpc_util.h"

namespace moe {

// A group of `size` members of one backend.
class Group {
 public:
  virtual ~Group() = default;
  virtual Exchange* Member(int rank) = 0;
};

// Members exchange through in-process mailboxes.
class InProcessGroup : public Group {
 public:
  InProcessGroup(int size, std::chrono::milliseconds timeout) : group_(size, timeout) {}
  Exchange* Member(int rank) override { return group_.Member(rank); }

 private:
  InProcessExchangeGroup group_;
};

// Members are real gRPC servers on loopback ports (in this process, so same-host reads work unless
// `same_host_reads` is false: then every block crosses TCP).
class GrpcGroup : public Group {
 public:
  GrpcGroup(int size, std::chrono::milliseconds timeout, bool same_host_reads = true) {
    std::vector<std::string> addresses;
    for (int i = 0; i < size; ++i) {
      services_.push_back(std::make_unique<ExchangeOnlyService>());
      addresses.emplace_back();
      auto server = StartLoopbackServer(services_.back().get(), &addresses.back());
      if (!server.ok()) {  // a test process that cannot listen on loopback cannot test anything
        std::fprintf(stderr, "GrpcGroup: %s\n", std::string(server.status().message()).c_str());
        std::abort();
      }
      servers_.push_back(std::move(*server));
    }
    for (int i = 0; i < size; ++i) {
      members_.push_back(std::make_unique<GrpcExchange>(i, /*epoch=*/7, addresses, timeout, same_host_reads));
      services_[i]->set_target(members_.back().get());
    }
  }
  ~GrpcGroup() override {
    for (auto& m : members_) m->Abort(absl::UnavailableError("group shutting down"));
    for (auto& s : servers_) s->Shutdown(DeadlineAfter(std::chrono::seconds(2)));
  }
  Exchange* Member(int rank) override { return members_[rank].get(); }
  GrpcExchange* grpc_member(int rank) { return members_[rank].get(); }

 private:
  std::vector<std::unique_ptr<ExchangeOnlyService>> services_;
  std::vector<std::unique_ptr<grpc::Server>> servers_;
  std::vector<std::unique_ptr<GrpcExchange>> members_;
};

// What member `from` sends member `to` in collective `tag` of the suites: sizes vary from empty to
// about 100 KB so that empty and large buffers both cross.
inline std::string ExchangeTestPayload(uint64_t tag, int from, int to) {
  const size_t n = (tag * 7919 + from * 131 + to * 17) % 5 == 0 ? 0 : (tag * 31 + from * 977 + to * 7) % 100000;
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 13 + from * 3 + to + tag) & 0xFF);
  return s;
}

// "in_process" or "grpc".
inline std::unique_ptr<Group> MakeGroup(const std::string& backend, int size, std::chrono::milliseconds timeout) {
  if (backend == "grpc") return std::make_unique<GrpcGroup>(size, timeout);
  return std::make_unique<InProcessGroup>(size, timeout);
}

}  // namespace moe

#endif  // MOE_EXCHANGE_EXCHANGE_TEST_GROUPS_H_
