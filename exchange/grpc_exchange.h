// Exchange over gRPC: each member sends every peer one unary Worker.Exchange call per collective and
// collects the peers' messages from its mailbox. Works across hosts; the epoch guards membership changes.
//
// The send side does not serialize the payload: the request is the ExchangeMessage's header bytes
// followed by a slice that points into the caller's send buffer (which stays alive while gRPC holds
// the slice, see ExchangeBuffer). Channels and servers use large HTTP/2 windows and frames
// (InternalChannelArguments, ConfigureInternalServer), so a multi-megabyte block is not paced by
// flow-control round trips.
//
// Between processes on one host, the copies through TCP (into the sender's socket, out of the
// receiver's, out of gRPC's buffers) are the cost. So each inline message carries a probe (a word of the
// sender's memory and its value); a receiver on the same host that can read it (process_vm_readv) says
// so in its reply, and from then on the sender sends that peer only the address of each block. The
// receiver copies the block straight from the sender's memory into its own (one copy, as MPI's
// shared-memory transport does) and completes the call after that copy, so the sender's buffer is
// unchanged while it is read. Across hosts, or where reading is refused, blocks stay inline.
#ifndef MOE_EXCHANGE_GRPC_EXCHANGE_H_
#define MOE_EXCHANGE_GRPC_EXCHANGE_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "exchange/exchange.h"
#include "exchange/mailbox.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "moe/v1/cluster.grpc.pb.h"

namespace moe {

// Channel arguments shared by every internal connection: no message size limit, large HTTP/2 windows
// and frames.
grpc::ChannelArguments InternalChannelArguments();
// The same settings for a server that internal peers call (workers, tests, benchmarks).
void ConfigureInternalServer(grpc::ServerBuilder* builder);
// Serves `service` with those settings on a free loopback port; `address` gets "127.0.0.1:PORT"
// (tests and benchmarks that run exchange members in one process or one MPI job).
absl::StatusOr<std::unique_ptr<grpc::Server>> StartLoopbackServer(grpc::Service* service, std::string* address);

// ExchangeMessage's wire bytes up to its payload's first byte: `head` (which has no payload), then the
// payload field's key and length. Followed by `payload_bytes` bytes it parses as the full message.
std::string EncodeExchangeHeader(const v1::ExchangeMessage& head, size_t payload_bytes);

class GrpcExchange : public Exchange {
 public:
  // `addresses[i]` is member i's Worker service. Connections are made lazily by gRPC. With
  // `same_host_reads` false, every block goes inline over TCP.
  GrpcExchange(int rank, uint64_t epoch, const std::vector<std::string>& addresses,
               std::chrono::milliseconds timeout, bool same_host_reads = true);
  // Completes, with ABORTED, the calls of peers still waiting for this member to read their blocks.
  ~GrpcExchange() override;

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(stubs_.size()); }
  uint64_t epoch() const { return epoch_; }
  absl::Status AllToAllV(uint64_t tag, const ExchangeBuffer& send, ExchangeBuffer* recv) override;

  // How a delivered message's call ends: its status and the reply. Called exactly once.
  using Completion = std::function<void(const grpc::Status&, const v1::ExchangeAck&)>;

  // The receiving half, called from the Worker service's Exchange handler (any thread) with the
  // request's raw bytes (an ExchangeMessage). An inline payload stays in gRPC's receive buffer,
  // referenced until its collective copies it out, and the call completes at once; a same-host block's
  // call completes when its collective has read it. Refuses, without storing, bytes that do not parse
  // (INVALID_ARGUMENT), a message of another epoch (FAILED_PRECONDITION) or from a non-member
  // (INVALID_ARGUMENT). `cancelled` (optional) tells whether the sender gave up on the call (its
  // deadline passed): a same-host block is then not trusted, as the sender may reuse its buffer.
  void Deliver(const grpc::ByteBuffer& message, Completion done, std::function<bool()> cancelled = {});
  // Delivers a message that completes at once (inline; tests, tools) and returns its status.
  grpc::Status Deliver(const v1::ExchangeMessage& message);

  // Ends a collective blocked on a peer that will never answer (a dead worker), now and for good:
  // AllToAll returns `status`, its calls in flight are cancelled, and peers waiting for their same-host
  // blocks to be read are released.
  // Called when a new shard map replaces this exchange's group.
  void Abort(absl::Status status);

  // Whether blocks to `member` go by address (it said it can read this process's memory).
  bool SendsByAddressTo(int member) const { return same_host_[member]->load(); }

  int64_t bytes_sent() const { return bytes_sent_.load(); }

 private:
  int rank_;
  uint64_t epoch_;
  std::chrono::milliseconds timeout_;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs_;  // Worker.Exchange, request bytes built here
  std::vector<size_t> recv_sizes_;
  // A received block: inline, bytes [offset, offset + size) of a request still held by gRPC; or same
  // host, `size` bytes at `address` in process `pid`, whose call `done` completes once they are read.
  struct Received {
    grpc::ByteBuffer request;
    size_t offset = 0, size = 0;
    int pid = 0;
    uint64_t address = 0;
    Completion done;  // set for same-host blocks only
    std::function<bool()> cancelled;
  };
  // Copies a received block into `out` (size bytes) and, for a same-host block, completes its call.
  absl::Status CopyOut(int from, Received& r, char* out);
  Mailbox<Received> inbox_;
  std::vector<Received> arrived_;  // per member, during a collective
  std::atomic<int64_t> bytes_sent_{0};
  const bool same_host_reads_;
  const uint64_t probe_value_;  // read by peers at its own address
  std::vector<std::unique_ptr<std::atomic<bool>>> same_host_;  // [member]: send by address
  absl::Mutex calls_mutex_;
  absl::Status aborted_ ABSL_GUARDED_BY(calls_mutex_);
  std::vector<grpc::ClientContext*> calls_in_flight_ ABSL_GUARDED_BY(calls_mutex_);
};

// The Worker.Exchange handler over raw bytes, shared by every service that serves it: delivers to
// `target` (UNAVAILABLE when null: no data plane yet) and finishes the call.
grpc::ServerUnaryReactor* ServeExchange(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response, GrpcExchange* target);

// A Worker service that answers only Exchange, forwarding to a GrpcExchange (tests and benchmarks).
class ExchangeOnlyService final : public v1::Worker::WithRawCallbackMethod_Exchange<v1::Worker::Service> {
 public:
  void set_target(GrpcExchange* target) { target_.store(target); }
  grpc::ServerUnaryReactor* Exchange(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override {
    return ServeExchange(context, request, response, target_.load());
  }

 private:
  std::atomic<GrpcExchange*> target_{nullptr};
};

}  // namespace moe

#endif  // MOE_EXCHANGE_GRPC_EXCHANGE_H_
