#include "exchange/grpc_exchange.h"

#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>

#include "absl/random/random.h"
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
struct IntArgument {
  const char* name;
  int value;
};
constexpr IntArgument kInternalHttp2Arguments[] = {
    {GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20},
    {GRPC_ARG_HTTP2_BDP_PROBE, 0},
    {GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (16 << 20) - 1},  // the largest frame HTTP/2 allows
};

const std::string& ExchangeMethod() {
  static const std::string* method = new std::string(absl::StrCat("/", v1::Worker::service_full_name(), "/Exchange"));
  return *method;
}

}  // namespace

grpc::ChannelArguments InternalChannelArguments() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  for (const IntArgument& a : kInternalHttp2Arguments) args.SetInt(a.name, a.value);
  return args;
}

void ConfigureInternalServer(grpc::ServerBuilder* builder) {
  builder->SetMaxReceiveMessageSize(-1);
  builder->SetMaxSendMessageSize(-1);
  for (const IntArgument& a : kInternalHttp2Arguments) builder->AddChannelArgument(a.name, a.value);
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartLoopbackServer(grpc::Service* service, std::string* address) {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(service);
  ConfigureInternalServer(&builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) return absl::InternalError("cannot start a loopback gRPC server");
  *address = absl::StrCat("127.0.0.1:", port);
  return server;
}

std::string EncodeExchangeHeader(const v1::ExchangeMessage& head, size_t payload_bytes) {
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

namespace {

// This host's boot id ("" if unknown: then no same-host reads).
const std::string& BootId() {
  static const std::string* id = [] {
    std::ifstream f("/proc/sys/kernel/random/boot_id");
    std::string line;
    std::getline(f, line);
    return new std::string(line);
  }();
  return *id;
}

// Reads `bytes` at `address` in process `pid` into `out`; false if any of it cannot be read.
bool ReadProcessMemory(int pid, uint64_t address, char* out, size_t bytes) {
  size_t done = 0;
  while (done < bytes) {
    iovec local{out + done, bytes - done};
    iovec remote{reinterpret_cast<void*>(address + done), bytes - done};
    const ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

GrpcExchange::GrpcExchange(int rank, uint64_t epoch, const std::vector<std::string>& addresses,
                           std::chrono::milliseconds timeout, bool same_host_reads)
    : rank_(rank),
      epoch_(epoch),
      timeout_(timeout),
      same_host_reads_(same_host_reads && !BootId().empty()),
      probe_value_(absl::Uniform<uint64_t>(absl::BitGen())) {
  for (const std::string& a : addresses) {
    stubs_.push_back(std::make_unique<grpc::GenericStub>(
        grpc::CreateCustomChannel(a, grpc::InsecureChannelCredentials(), InternalChannelArguments())));
    same_host_.push_back(std::make_unique<std::atomic<bool>>(false));
  }
}

GrpcExchange::~GrpcExchange() { Abort(absl::AbortedError("exchange group replaced")); }

void GrpcExchange::Abort(absl::Status status) {
  {
    absl::MutexLock lock(&calls_mutex_);
    if (aborted_.ok()) aborted_ = status;
    for (grpc::ClientContext* c : calls_in_flight_) c->TryCancel();
  }
  inbox_.Abort(status);
  for (Received& r : inbox_.Drain()) {
    if (r.done) r.done(ToGrpcStatus(status), v1::ExchangeAck());
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
  for (int i = 1; i < size(); ++i) calls.push_back(std::make_unique<Call>());
  {
    absl::MutexLock lock(&calls_mutex_);
    if (!aborted_.ok()) return aborted_;
    for (auto& c : calls) calls_in_flight_.push_back(&c->context);  // Abort cancels them
  }
  absl::Mutex mutex;
  int pending = 0;
  for (int i = 1; i < size(); ++i) {
    const int to = (rank_ + i) % size();
    Call* call = calls[i - 1].get();
    call->context.set_deadline(DeadlineAfter(timeout_));
    const size_t bytes = send.block_size(to);
    v1::ExchangeMessage head;
    head.set_epoch(epoch_);
    head.set_tag(tag);
    head.set_from(rank_);
    if (same_host_[to]->load()) {
      // By address: the peer reads the block out of this process before it completes the call.
      v1::SameHostBlock* block = head.mutable_same_host();
      block->set_pid(getpid());
      block->set_address(reinterpret_cast<uintptr_t>(send.block(to)));
      block->set_bytes(bytes);
      const std::string encoded = head.SerializeAsString();
      grpc::Slice slice(encoded.data(), encoded.size());
      call->request = grpc::ByteBuffer(&slice, 1);
    } else {
      if (same_host_reads_) {
        v1::SameHostProbe* probe = head.mutable_probe();
        probe->set_boot_id(BootId());
        probe->set_pid(getpid());
        probe->set_address(reinterpret_cast<uintptr_t>(&probe_value_));
        probe->set_value(probe_value_);
      }
      const std::string header = EncodeExchangeHeader(head, bytes);
      std::vector<grpc::Slice> slices{grpc::Slice(header.data(), header.size())};
      if (bytes > 0) {
        // Zero-copy: the slice keeps the send storage alive until gRPC has written it.
        auto* keep = new std::shared_ptr<char[]>(send.ShareStorage());
        slices.emplace_back(const_cast<char*>(send.block(to)), bytes,
                            [](void* p) { delete static_cast<std::shared_ptr<char[]>*>(p); }, keep);
      }
      call->request = grpc::ByteBuffer(slices.data(), slices.size());
    }
    bytes_sent_ += static_cast<int64_t>(bytes);
    {
      absl::MutexLock lock(&mutex);
      ++pending;
    }
    Call* raw = call;
    std::atomic<bool>* same_host = same_host_[to].get();
    stubs_[to]->UnaryCall(&raw->context, ExchangeMethod(), grpc::StubOptions(), &raw->request, &raw->response,
                          [raw, same_host, &mutex, &pending](grpc::Status s) {
                            v1::ExchangeAck ack;
                            grpc::ByteBuffer reply = raw->response;
                            grpc::ProtoBufferReader reader(&reply);
                            if (s.ok() && ack.ParseFromZeroCopyStream(&reader) && ack.same_host_reads()) {
                              same_host->store(true);
                            }
                            absl::MutexLock lock(&mutex);
                            raw->status = std::move(s);
                            --pending;
                          });
  }
  // Receive while the sends are in flight: each block goes into the caller's buffer as soon as the
  // sizes are known. Then make sure every send landed.
  absl::Status receive_status;
  arrived_.assign(static_cast<size_t>(size()), Received());
  for (int i = 1; i < size(); ++i) {
    const int from = (rank_ - i + size()) % size();
    // After a failure, only what already arrived is taken (so that its sender is released below).
    auto msg = inbox_.Take(tag, from, receive_status.ok() ? timeout_ : std::chrono::milliseconds(0));
    if (msg.ok()) arrived_[from] = std::move(*msg);
    else if (receive_status.ok()) receive_status = msg.status();
  }
  if (receive_status.ok()) {
    recv_sizes_.resize(static_cast<size_t>(size()));
    for (int p = 0; p < size(); ++p) recv_sizes_[p] = p == rank_ ? send.block_size(p) : arrived_[p].size;
    recv->Layout(recv_sizes_);
    std::memcpy(recv->block(rank_), send.block(rank_), recv_sizes_[rank_]);
  }
  for (int p = 0; p < size(); ++p) {
    if (p == rank_) continue;
    absl::Status copied = receive_status.ok() ? CopyOut(p, arrived_[p], recv->block(p)) : absl::OkStatus();
    if (arrived_[p].done) arrived_[p].done(ToGrpcStatus(receive_status.ok() ? copied : receive_status), v1::ExchangeAck());
    if (receive_status.ok()) receive_status = copied;
    arrived_[p] = Received();  // hand the receive buffer back to gRPC
  }
  {
    absl::MutexLock lock(&mutex);
    mutex.Await(absl::Condition(+[](int* p) { return *p == 0; }, &pending));  // each call has a deadline
  }
  {
    absl::MutexLock lock(&calls_mutex_);
    calls_in_flight_.clear();
  }
  // A failed receive (deadline, abort) is the cause; failed sends follow from it.
  MOE_RETURN_IF_ERROR(receive_status);
  for (size_t i = 0; i < calls.size(); ++i) {
    const int to = (rank_ + 1 + static_cast<int>(i)) % size();
    if (!calls[i]->status.ok()) return FromGrpcStatus(calls[i]->status, absl::StrCat("exchange send to member ", to));
  }
  return absl::OkStatus();
}

absl::Status GrpcExchange::CopyOut(int from, Received& r, char* out) {
  if (r.done) {
    auto gave_up = [&r] { return r.cancelled && r.cancelled(); };
    if (gave_up()) return absl::DeadlineExceededError(absl::StrCat("member ", from, " gave up on its block"));
    if (r.size > 0 && !ReadProcessMemory(r.pid, r.address, out, r.size)) {
      return absl::DataLossError(absl::StrCat("exchange: cannot read member ", from, "'s block in process ", r.pid));
    }
    // A sender that gave up during the read may have been changing the bytes.
    if (gave_up()) return absl::DeadlineExceededError(absl::StrCat("member ", from, " gave up on its block"));
    return absl::OkStatus();
  }
  // The payload's bytes, straight from gRPC's receive slices into the caller's block.
  std::vector<grpc::Slice> slices;
  if (r.size > 0 && !r.request.Dump(&slices).ok()) return absl::InternalError("exchange: unreadable received buffer");
  size_t skip = r.offset, copied = 0;
  for (const grpc::Slice& s : slices) {
    if (copied == r.size) break;
    if (skip >= s.size()) {
      skip -= s.size();
      continue;
    }
    const size_t n = std::min(s.size() - skip, r.size - copied);
    std::memcpy(out + copied, s.begin() + skip, n);
    copied += n;
    skip = 0;
  }
  return absl::OkStatus();
}

void GrpcExchange::Deliver(const grpc::ByteBuffer& message, Completion done, std::function<bool()> cancelled) {
  // Parse the fields and locate the payload without copying it (unknown fields are skipped, as
  // protobuf would; a repeated field keeps the last, as protobuf would).
  grpc::ByteBuffer request = message;  // a new reference to the same slices
  grpc::ProtoBufferReader reader(&request);
  google::protobuf::io::CodedInputStream in(&reader);
  in.SetTotalBytesLimit(std::numeric_limits<int>::max());
  using Wire = google::protobuf::internal::WireFormatLite;
  constexpr auto kLengthDelimited = Wire::WIRETYPE_LENGTH_DELIMITED;
  uint64_t epoch = 0, tag = 0;
  uint32_t from = 0;
  Received payload;
  v1::SameHostBlock same_host;
  v1::SameHostProbe probe;
  bool by_address = false, ok = true;
  auto read_small_message = [&in](google::protobuf::MessageLite* m) {
    uint32_t length = 0;
    std::string bytes;
    return in.ReadVarint32(&length) && length < (1u << 16) && in.ReadString(&bytes, static_cast<int>(length)) &&
           m->ParseFromString(bytes);
  };
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
      case Wire::MakeTag(v1::ExchangeMessage::kPayloadFieldNumber, kLengthDelimited): {
        uint32_t length = 0;
        ok = in.ReadVarint32(&length) && length <= static_cast<uint32_t>(std::numeric_limits<int>::max());
        payload.offset = static_cast<size_t>(in.CurrentPosition());
        payload.size = length;
        ok = ok && in.Skip(static_cast<int>(length));
        break;
      }
      case Wire::MakeTag(v1::ExchangeMessage::kSameHostFieldNumber, kLengthDelimited):
        ok = read_small_message(&same_host);
        by_address = true;
        break;
      case Wire::MakeTag(v1::ExchangeMessage::kProbeFieldNumber, kLengthDelimited): ok = read_small_message(&probe); break;
      default: ok = Wire::SkipField(&in, key);
    }
  }
  const v1::ExchangeAck no_reply;
  if (!ok || !reader.status().ok() ||
      (by_address && (payload.size > 0 || same_host.pid() <= 0 ||
                      same_host.bytes() > static_cast<uint64_t>(std::numeric_limits<int>::max())))) {
    done(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "exchange message does not parse"), no_reply);
    return;
  }
  if (epoch != epoch_) {
    done(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                      absl::StrCat("exchange message of epoch ", epoch, " refused: this member is at epoch ", epoch_)),
         no_reply);
    return;
  }
  const int sender = static_cast<int>(from);
  if (sender < 0 || sender >= size() || sender == rank_) {
    done(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, absl::StrCat("exchange message from non-member ", sender)),
         no_reply);
    return;
  }
  if (by_address) {
    if (!same_host_reads_) {
      done(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "this member does not read peers' memory"), no_reply);
      return;
    }
    payload.pid = same_host.pid();
    payload.address = same_host.address();
    payload.size = same_host.bytes();
    payload.done = done;  // completed by the collective, once it has read the block
    payload.cancelled = std::move(cancelled);
    if (absl::Status s = inbox_.Put(tag, sender, std::move(payload)); !s.ok()) done(ToGrpcStatus(s), no_reply);
    return;
  }
  // Inline: reply at once, saying whether this member can read the sender's memory.
  v1::ExchangeAck reply;
  if (same_host_reads_ && probe.boot_id() == BootId() && probe.pid() > 0) {
    uint64_t seen = 0;
    reply.set_same_host_reads(ReadProcessMemory(probe.pid(), probe.address(), reinterpret_cast<char*>(&seen), sizeof seen) &&
                              seen == probe.value());
  }
  payload.request = std::move(request);
  done(ToGrpcStatus(inbox_.Put(tag, sender, std::move(payload))), reply);
}

grpc::Status GrpcExchange::Deliver(const v1::ExchangeMessage& message) {
  const std::string bytes = message.SerializeAsString();
  grpc::Slice slice(bytes.data(), bytes.size());
  grpc::Status result(grpc::StatusCode::UNKNOWN, "not completed at once (a same-host block)");
  Deliver(grpc::ByteBuffer(&slice, 1), [&result](const grpc::Status& s, const v1::ExchangeAck&) { result = s; });
  return result;
}

grpc::ServerUnaryReactor* ServeExchange(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response, GrpcExchange* target) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (target == nullptr) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "exchange not ready"));
    return reactor;
  }
  target->Deliver(
      *request,
      [reactor, response](const grpc::Status& status, const v1::ExchangeAck& reply) {
        const std::string bytes = reply.SerializeAsString();
        grpc::Slice slice(bytes.data(), bytes.size());
        *response = grpc::ByteBuffer(&slice, 1);
        reactor->Finish(status);
      },
      [context] { return context->IsCancelled(); });
  return reactor;
}

}  // namespace moe
