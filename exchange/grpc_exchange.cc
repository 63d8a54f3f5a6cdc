#include "exchange/grpc_exchange.h"

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/wire_format_lite.h"
#include "proto/grpc_util.h"

namespace moe {

namespace {

// HTTP/2 flow control and framing for the data plane. gRPC's defaults (64 KB initial windows grown by
// BDP probes, 16 KB frames) pace a multi-megabyte block by window updates; internal peers are trusted
// and the exchange bounds its own memory, so the windows start large and stay large.
constexpr int kWindowBytes = 64 << 20;
constexpr int kFrameBytes = (16 << 20) - 1;  // the largest HTTP/2 allows

const std::string& ExchangeMethod() {
  static const std::string* method = new std::string(absl::StrCat("/", v1::Worker::service_full_name(), "/Exchange"));
  return *method;
}

}  // namespace

grpc::ChannelArguments InternalChannelArguments() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, kWindowBytes);
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, kFrameBytes);
  return args;
}

void ConfigureInternalServer(grpc::ServerBuilder* builder) {
  builder->SetMaxReceiveMessageSize(-1);
  builder->SetMaxSendMessageSize(-1);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, kWindowBytes);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, kFrameBytes);
}

std::string EncodeExchangeHeader(uint64_t epoch, uint64_t tag, int from, size_t payload_bytes) {
  v1::ExchangeMessage head;
  head.set_epoch(epoch);
  head.set_tag(tag);
  head.set_from(from);
  std::string out = head.SerializeAsString();
  {
    google::protobuf::io::StringOutputStream stream(&out);  // appends
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.WriteTag(google::protobuf::internal::WireFormatLite::MakeTag(
        v1::ExchangeMessage::kPayloadFieldNumber, google::protobuf::internal::WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
    coded.WriteVarint64(payload_bytes);
  }
  return out;
}

GrpcExchange::GrpcExchange(int rank, uint64_t epoch, const std::vector<std::string>& addresses,
                           std::chrono::milliseconds timeout)
    : rank_(rank), epoch_(epoch), timeout_(timeout) {
  for (const std::string& a : addresses) {
    stubs_.push_back(std::make_unique<grpc::GenericStub>(
        grpc::CreateCustomChannel(a, grpc::InsecureChannelCredentials(), InternalChannelArguments())));
  }
}

absl::Status GrpcExchange::AllToAllV(uint64_t tag, const ExchangeBuffer& send, ExchangeBuffer* recv) {
  MOE_RETURN_IF_ERROR(CheckBlockCount(send, size()));
  struct Call {
    grpc::ClientContext context;
    grpc::ByteBuffer request, response;
    grpc::Status status;
  };
  std::vector<std::unique_ptr<Call>> calls;
  absl::Mutex mutex;
  int pending = 0;
  for (int i = 1; i < size(); ++i) {
    const int to = (rank_ + i) % size();
    auto call = std::make_unique<Call>();
    call->context.set_deadline(DeadlineAfter(timeout_));
    const size_t bytes = send.block_size(to);
    const std::string header = EncodeExchangeHeader(epoch_, tag, rank_, bytes);
    std::vector<grpc::Slice> slices{grpc::Slice(header.data(), header.size())};
    if (bytes > 0) {
      // Zero-copy: the slice keeps the send storage alive until gRPC has written it.
      auto* keep = new std::shared_ptr<char[]>(send.ShareStorage());
      slices.emplace_back(const_cast<char*>(send.block(to)), bytes,
                          [](void* p) { delete static_cast<std::shared_ptr<char[]>*>(p); }, keep);
    }
    call->request = grpc::ByteBuffer(slices.data(), slices.size());
    bytes_sent_ += static_cast<int64_t>(bytes);
    {
      absl::MutexLock lock(&mutex);
      ++pending;
    }
    Call* raw = call.get();
    stubs_[to]->UnaryCall(&raw->context, ExchangeMethod(), grpc::StubOptions(), &raw->request, &raw->response,
                          [raw, &mutex, &pending](grpc::Status s) {
                            absl::MutexLock lock(&mutex);
                            raw->status = std::move(s);
                            --pending;
                          });
    calls.push_back(std::move(call));
  }
  // Receive while the sends are in flight; then make sure every send landed.
  absl::Status receive_status;
  arrived_.resize(static_cast<size_t>(size()));
  for (int i = 1; i < size() && receive_status.ok(); ++i) {
    const int from = (rank_ - i + size()) % size();
    auto msg = inbox_.Take(tag, from, timeout_);
    if (!msg.ok()) receive_status = msg.status();
    else arrived_[from] = std::move(*msg);
  }
  {
    absl::MutexLock lock(&mutex);
    mutex.Await(absl::Condition(+[](int* p) { return *p == 0; }, &pending));  // each call has a deadline
  }
  for (size_t i = 0; i < calls.size(); ++i) {
    const int to = (rank_ + 1 + static_cast<int>(i)) % size();
    if (!calls[i]->status.ok()) return FromGrpcStatus(calls[i]->status, absl::StrCat("exchange send to member ", to));
  }
  MOE_RETURN_IF_ERROR(receive_status);
  recv_sizes_.resize(static_cast<size_t>(size()));
  for (int p = 0; p < size(); ++p) recv_sizes_[p] = p == rank_ ? send.block_size(p) : arrived_[p].size();
  recv->Layout(recv_sizes_);
  std::memcpy(recv->block(rank_), send.block(rank_), recv_sizes_[rank_]);
  for (int p = 0; p < size(); ++p) {
    if (p == rank_) continue;
    std::memcpy(recv->block(p), arrived_[p].data(), recv_sizes_[p]);
    arrived_[p] = std::string();  // the mailbox handed over its storage; do not keep megabytes around
  }
  return absl::OkStatus();
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
