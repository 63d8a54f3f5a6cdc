// Exchange over gRPC: each member sends every peer one unary Worker.Exchange call per collective and
// collects the peers' messages from its mailbox. Works across hosts; the epoch guards membership changes.
//
// The send side does not serialize the payload: the request is the ExchangeMessage's header bytes
// followed by a slice that points into the caller's send buffer (which stays alive while gRPC holds
// the slice, see ExchangeBuffer). Channels and servers use large HTTP/2 windows and frames
// (InternalChannelArguments, ConfigureInternalServer), so a multi-megabyte block is not paced by
// flow-control round trips.
#ifndef MOE_EXCHANGE_GRPC_EXCHANGE_H_
#define MOE_EXCHANGE_GRPC_EXCHANGE_H_

#include <atomic>
#include <chrono>
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

// ExchangeMessage's wire bytes up to its payload's first byte: epoch, tag and from, then the payload
// field's key and length. Followed by `payload_bytes` bytes it parses as the full message.
std::string EncodeExchangeHeader(uint64_t epoch, uint64_t tag, int from, size_t payload_bytes);

class GrpcExchange : public Exchange {
 public:
  // `addresses[i]` is member i's Worker service. Connections are made lazily by gRPC.
  GrpcExchange(int rank, uint64_t epoch, const std::vector<std::string>& addresses,
               std::chrono::milliseconds timeout);

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(stubs_.size()); }
  uint64_t epoch() const { return epoch_; }
  absl::Status AllToAllV(uint64_t tag, const ExchangeBuffer& send, ExchangeBuffer* recv) override;

  // The receiving half, called from the Worker service's Exchange handler (any thread) with the
  // request's raw bytes (an ExchangeMessage): the payload stays in gRPC's receive buffer, referenced
  // until its collective copies it out, so it is copied once on the way in. Refuses, without storing,
  // bytes that do not parse (INVALID_ARGUMENT), a message of another epoch (FAILED_PRECONDITION) or
  // from a non-member (INVALID_ARGUMENT).
  grpc::Status Deliver(const grpc::ByteBuffer& message);
  // The same for a parsed message (tests, tools).
  grpc::Status Deliver(const v1::ExchangeMessage& message);

  // Ends a collective blocked on a peer that will never answer (a dead worker), now and for good:
  // AllToAll returns `status`. Called when a new shard map replaces this exchange's group.
  void Abort(absl::Status status) { inbox_.Abort(std::move(status)); }

  int64_t bytes_sent() const { return bytes_sent_.load(); }

 private:
  int rank_;
  uint64_t epoch_;
  std::chrono::milliseconds timeout_;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs_;  // Worker.Exchange, request bytes built here
  std::vector<size_t> recv_sizes_;
  // A received payload: bytes [offset, offset + size) of a request still held by gRPC.
  struct Received {
    grpc::ByteBuffer request;
    size_t offset = 0, size = 0;
  };
  Mailbox<Received> inbox_;
  std::vector<Received> arrived_;  // per member, during a collective
  std::atomic<int64_t> bytes_sent_{0};
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
