#include "exchange/grpc_exchange.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "proto/grpc_util.h"

namespace moe {

grpc::ChannelArguments InternalChannelArguments() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return args;
}

GrpcExchange::GrpcExchange(int rank, uint64_t epoch, const std::vector<std::string>& addresses,
                           std::chrono::milliseconds timeout)
    : rank_(rank), epoch_(epoch), timeout_(timeout) {
  for (const std::string& a : addresses) {
    stubs_.push_back(v1::Worker::NewStub(
        grpc::CreateCustomChannel(a, grpc::InsecureChannelCredentials(), InternalChannelArguments())));
  }
}

absl::StatusOr<std::vector<std::string>> GrpcExchange::AllToAll(uint64_t tag, std::vector<std::string> send) {
  if (static_cast<int>(send.size()) != size()) return absl::InvalidArgumentError("AllToAll: one buffer per member");
  std::vector<std::string> recv(static_cast<size_t>(size()));
  recv[rank_] = std::move(send[rank_]);

  struct Call {
    grpc::ClientContext context;
    v1::ExchangeMessage request;
    v1::ExchangeAck response;
    grpc::Status status;
  };
  std::vector<std::unique_ptr<Call>> calls;
  absl::Mutex mutex;
  int pending = 0;
  for (int to = 0; to < size(); ++to) {
    if (to == rank_) continue;
    auto call = std::make_unique<Call>();
    call->context.set_deadline(DeadlineAfter(timeout_));
    call->request.set_epoch(epoch_);
    call->request.set_tag(tag);
    call->request.set_from(rank_);
    bytes_sent_ += static_cast<int64_t>(send[to].size());
    call->request.set_payload(std::move(send[to]));
    {
      absl::MutexLock lock(&mutex);
      ++pending;
    }
    Call* raw = call.get();
    stubs_[to]->async()->Exchange(&raw->context, &raw->request, &raw->response, [raw, &mutex, &pending](grpc::Status s) {
      absl::MutexLock lock(&mutex);
      raw->status = std::move(s);
      --pending;
    });
    calls.push_back(std::move(call));
  }
  // Receive while the sends are in flight; then make sure every send landed.
  absl::Status receive_status;
  for (int from = 0; from < size() && receive_status.ok(); ++from) {
    if (from == rank_) continue;
    auto msg = inbox_.Take(tag, from, timeout_);
    if (!msg.ok()) receive_status = msg.status();
    else recv[from] = std::move(*msg);
  }
  {
    absl::MutexLock lock(&mutex);
    mutex.Await(absl::Condition(+[](int* p) { return *p == 0; }, &pending));  // each call has a deadline
  }
  size_t i = 0;
  for (int to = 0; to < size(); ++to) {
    if (to == rank_) continue;
    if (!calls[i]->status.ok()) return FromGrpcStatus(calls[i]->status, absl::StrCat("exchange send to member ", to));
    ++i;
  }
  MOE_RETURN_IF_ERROR(receive_status);
  return recv;
}

grpc::Status GrpcExchange::Deliver(const v1::ExchangeMessage& m) {
  if (m.epoch() != epoch_) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("exchange message of epoch ", m.epoch(), " refused: this member is at epoch ", epoch_));
  }
  if (m.from() < 0 || m.from() >= size() || m.from() == rank_) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, absl::StrCat("exchange message from non-member ", m.from()));
  }
  return ToGrpcStatus(inbox_.Put(m.tag(), m.from(), m.payload()));
}

grpc::Status ExchangeOnlyService::Exchange(grpc::ServerContext*, const v1::ExchangeMessage* request, v1::ExchangeAck*) {
  GrpcExchange* target = target_.load();
  if (target == nullptr) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "exchange not ready");
  return target->Deliver(*request);
}

}  // namespace moe
