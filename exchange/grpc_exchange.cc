#include "exchange/grpc_exchange.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "google/protobuf/io/coded_stream.h"
#include "grpcpp/support/proto_buffer_reader.h"
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
  arrived_.assign(static_cast<size_t>(size()), Received());
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
  for (int p = 0; p < size(); ++p) recv_sizes_[p] = p == rank_ ? send.block_size(p) : arrived_[p].size;
  recv->Layout(recv_sizes_);
  std::memcpy(recv->block(rank_), send.block(rank_), recv_sizes_[rank_]);
  std::vector<grpc::Slice> slices;
  for (int p = 0; p < size(); ++p) {
    if (p == rank_) continue;
    // The payload's bytes, straight from gRPC's receive slices into the caller's block.
    Received& r = arrived_[p];
    if (r.size > 0 && !r.request.Dump(&slices).ok()) return absl::InternalError("exchange: unreadable received buffer");
    size_t skip = r.offset, copied = 0;
    for (const grpc::Slice& s : slices) {
      if (copied == r.size) break;
      if (skip >= s.size()) {
        skip -= s.size();
        continue;
      }
      const size_t n = std::min(s.size() - skip, r.size - copied);
      std::memcpy(recv->block(p) + copied, s.begin() + skip, n);
      copied += n;
      skip = 0;
    }
    slices.clear();
    r = Received();  // hand the receive buffer back to gRPC
  }
  return absl::OkStatus();
}

grpc::Status GrpcExchange::Deliver(const grpc::ByteBuffer& message) {
  // Parse the header fields and locate the payload without copying it (unknown fields are skipped, as
  // protobuf would; a repeated payload field keeps the last, as protobuf would).
  grpc::ByteBuffer request = message;  // a new reference to the same slices
  grpc::ProtoBufferReader reader(&request);
  google::protobuf::io::CodedInputStream in(&reader);
  in.SetTotalBytesLimit(std::numeric_limits<int>::max());
  using Wire = google::protobuf::internal::WireFormatLite;
  uint64_t epoch = 0, tag = 0;
  uint32_t from = 0;
  Received payload;
  bool ok = true;
  while (ok) {
    const uint32_t key = in.ReadTag();
    if (key == 0) {  // the end, or a tag that does not parse
      ok = static_cast<size_t>(in.CurrentPosition()) == message.Length();
      break;
    }
    switch (key) {
      case Wire::MakeTag(v1::ExchangeMessage::kEpochFieldNumber, Wire::WIRETYPE_VARINT): ok = in.ReadVarint64(&epoch); break;
      case Wire::MakeTag(v1::ExchangeMessage::kTagFieldNumber, Wire::WIRETYPE_VARINT): ok = in.ReadVarint64(&tag); break;
      case Wire::MakeTag(v1::ExchangeMessage::kFromFieldNumber, Wire::WIRETYPE_VARINT): ok = in.ReadVarint32(&from); break;
      case Wire::MakeTag(v1::ExchangeMessage::kPayloadFieldNumber, Wire::WIRETYPE_LENGTH_DELIMITED): {
        uint32_t length = 0;
        ok = in.ReadVarint32(&length) && length <= static_cast<uint32_t>(std::numeric_limits<int>::max());
        payload.offset = static_cast<size_t>(in.CurrentPosition());
        payload.size = length;
        ok = ok && in.Skip(static_cast<int>(length));
        break;
      }
      default: ok = Wire::SkipField(&in, key);
    }
  }
  if (!ok || !reader.status().ok()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "exchange message does not parse");
  }
  if (epoch != epoch_) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("exchange message of epoch ", epoch, " refused: this member is at epoch ", epoch_));
  }
  const int sender = static_cast<int>(from);
  if (sender < 0 || sender >= size() || sender == rank_) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, absl::StrCat("exchange message from non-member ", sender));
  }
  payload.request = std::move(request);
  return ToGrpcStatus(inbox_.Put(tag, sender, std::move(payload)));
}

grpc::Status GrpcExchange::Deliver(const v1::ExchangeMessage& message) {
  const std::string bytes = message.SerializeAsString();
  grpc::Slice slice(bytes.data(), bytes.size());
  return Deliver(grpc::ByteBuffer(&slice, 1));
}

grpc::ServerUnaryReactor* ServeExchange(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response, GrpcExchange* target) {
  grpc::Slice empty;  // ExchangeAck has no fields
  *response = grpc::ByteBuffer(&empty, 1);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(target == nullptr ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "exchange not ready")
                                    : target->Deliver(*request));
  return reactor;
}

}  // namespace moe
