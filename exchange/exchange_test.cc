// The Exchange test suite, run unchanged against every backend that can run in this process.
#include <unistd.h>

#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <thread>

#include "common/status_matchers.h"
#include "exchange/exchange_test_groups.h"
#include "gtest/gtest.h"
#include "proto/grpc_util.h"

namespace moe {
namespace {

using ::moe::testing::IsOk;
using ::moe::testing::StatusIs;

using GroupFactory = std::function<std::unique_ptr<Group>(int, std::chrono::milliseconds)>;

struct Backend {
  std::string name;
  GroupFactory make;
};

class ExchangeSuite : public ::testing::TestWithParam<Backend> {};

// Runs fn(rank) on one thread per member and returns each member's status.
std::vector<absl::Status> RunMembers(int size, const std::function<absl::Status(int)>& fn) {
  std::vector<absl::Status> status(static_cast<size_t>(size));
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) threads.emplace_back([&, r] { status[r] = fn(r); });
  for (auto& t : threads) t.join();
  return status;
}

TEST_P(ExchangeSuite, AllToAllDeliversEveryBufferToItsDestination) {
  for (int size : {1, 2, 4}) {
    auto group = GetParam().make(size, std::chrono::seconds(10));
    auto status = RunMembers(size, [&](int rank) -> absl::Status {
      Exchange* ex = group->Member(rank);
      if (ex->rank() != rank || ex->size() != size) return absl::InternalError("rank/size");
      for (uint64_t tag = 1; tag <= 20; ++tag) {
        std::vector<std::string> send;
        for (int to = 0; to < size; ++to) send.push_back(ExchangeTestPayload(tag, rank, to));
        auto recv = ex->AllToAll(tag, std::move(send));
        if (!recv.ok()) return recv.status();
        for (int from = 0; from < size; ++from) {
          if ((*recv)[from] != ExchangeTestPayload(tag, from, rank)) {
            return absl::InternalError("wrong payload from " + std::to_string(from));
          }
        }
      }
      return ex->Barrier(1000);
    });
    for (int r = 0; r < size; ++r) EXPECT_THAT(status[r], IsOk()) << GetParam().name << " size " << size << " rank " << r;
  }
}

TEST_P(ExchangeSuite, AllToAllVFillsCallerOwnedBuffersReusedAcrossCollectives) {
  constexpr int kSize = 3;
  auto group = GetParam().make(kSize, std::chrono::seconds(10));
  auto status = RunMembers(kSize, [&](int rank) -> absl::Status {
    Exchange* ex = group->Member(rank);
    ExchangeBuffer send, recv;  // one pair for all collectives, as the dispatcher keeps them
    for (uint64_t tag = 1; tag <= 12; ++tag) {
      std::vector<size_t> sizes;
      for (int to = 0; to < kSize; ++to) sizes.push_back(ExchangeTestPayload(tag, rank, to).size());
      send.Layout(sizes);
      for (int to = 0; to < kSize; ++to) {
        const std::string p = ExchangeTestPayload(tag, rank, to);
        std::memcpy(send.block(to), p.data(), p.size());
      }
      if (absl::Status s = ex->AllToAllV(tag, send, &recv); !s.ok()) return s;
      if (recv.members() != kSize) return absl::InternalError("receive buffer has the wrong block count");
      for (int from = 0; from < kSize; ++from) {
        const absl::Span<const char> got = recv.view(from);
        if (std::string(got.data(), got.size()) != ExchangeTestPayload(tag, from, rank)) {
          return absl::InternalError("wrong block from " + std::to_string(from) + " at tag " + std::to_string(tag));
        }
      }
    }
    return absl::OkStatus();
  });
  for (int r = 0; r < kSize; ++r) EXPECT_THAT(status[r], IsOk()) << GetParam().name << " rank " << r;
}

TEST_P(ExchangeSuite, AMemberThatSkipsTheCollectiveGivesDeadlineExceededNotAHang) {
  auto group = GetParam().make(3, std::chrono::milliseconds(300));
  auto status = RunMembers(3, [&](int rank) -> absl::Status {
    if (rank == 2) return absl::OkStatus();  // never enters
    return group->Member(rank)->AllToAll(5, std::vector<std::string>(3, "x")).status();
  });
  EXPECT_THAT(status[0], StatusIs(absl::StatusCode::kDeadlineExceeded, "from member 2"));
  EXPECT_THAT(status[1], StatusIs(absl::StatusCode::kDeadlineExceeded, "from member 2"));
}

TEST_P(ExchangeSuite, RejectsWrongNumberOfBuffers) {
  auto group = GetParam().make(2, std::chrono::milliseconds(300));
  EXPECT_THAT(group->Member(0)->AllToAll(1, {"only one"}), StatusIs(absl::StatusCode::kInvalidArgument, "one buffer per member"));
}

INSTANTIATE_TEST_SUITE_P(
    Backends, ExchangeSuite,
    ::testing::Values(Backend{"in_process", [](int n, std::chrono::milliseconds t) -> std::unique_ptr<Group> {
                                return std::make_unique<InProcessGroup>(n, t);
                              }},
                      Backend{"grpc", [](int n, std::chrono::milliseconds t) -> std::unique_ptr<Group> {
                                return std::make_unique<GrpcGroup>(n, t);
                              }},
                      Backend{"grpc_tcp_only", [](int n, std::chrono::milliseconds t) -> std::unique_ptr<Group> {
                                return std::make_unique<GrpcGroup>(n, t, /*same_host_reads=*/false);
                              }}),
    [](const auto& info) { return info.param.name; });

TEST(ExchangeBufferTest, LayoutReusesStorageUnlessATransportStillHoldsIt) {
  ExchangeBuffer b;
  b.Layout(std::vector<size_t>{3, 0, 5});
  EXPECT_EQ(b.members(), 3);
  EXPECT_EQ(b.offset(2), 3u);
  EXPECT_EQ(b.block_size(1), 0u);
  EXPECT_EQ(b.total_bytes(), 8u);
  std::memcpy(b.block(0), "abcdefgh", 8);
  const char* first = b.block(0);
  b.Layout(std::vector<size_t>{4, 4});
  EXPECT_EQ(b.block(0), first) << "a smaller layout reuses the storage";
  std::shared_ptr<char[]> in_flight = b.ShareStorage();  // what a zero-copy send holds
  b.Layout(std::vector<size_t>{4, 4});
  EXPECT_NE(b.block(0), first) << "storage still held by a transport is not overwritten";
  EXPECT_EQ(std::string(in_flight.get(), 8), "abcdefgh");
}

// The header of an inline message from `from` (no probe).
std::string Header(uint64_t epoch, uint64_t tag, int from, size_t payload_bytes) {
  v1::ExchangeMessage head;
  head.set_epoch(epoch);
  head.set_tag(tag);
  head.set_from(from);
  return EncodeExchangeHeader(head, payload_bytes);
}

// Delivers raw bytes to `member`; returns the status its call completed with (at once).
grpc::Status DeliverBytes(GrpcExchange* member, const std::string& bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  std::optional<grpc::Status> result;
  member->Deliver(grpc::ByteBuffer(&slice, 1), [&result](const grpc::Status& s, const v1::ExchangeAck&) { result = s; });
  return result.value_or(grpc::Status(grpc::StatusCode::UNKNOWN, "not completed at once"));
}

TEST(GrpcExchangeTest, HeaderBytesFollowedByThePayloadParseAsTheExchangeMessage) {
  const std::string payload(300, 'p');  // long enough for a two-byte length varint
  v1::ExchangeMessage m;
  ASSERT_TRUE(m.ParseFromString(Header(9, 1ull << 40, 3, payload.size()) + payload));
  EXPECT_EQ(m.epoch(), 9u);
  EXPECT_EQ(m.tag(), 1ull << 40);
  EXPECT_EQ(m.from(), 3);
  EXPECT_EQ(m.payload(), payload);
  ASSERT_TRUE(m.ParseFromString(Header(1, 2, 0, 0)));
  EXPECT_EQ(m.payload(), "");
}

TEST(GrpcExchangeTest, RefusesMessagesFromAnotherEpochOrANonMember) {
  GrpcGroup group(2, std::chrono::milliseconds(500));
  v1::ExchangeMessage m;
  m.set_epoch(6);
  m.set_tag(1);
  m.set_from(1);
  m.set_payload("stale");
  grpc::Status s = group.grpc_member(0)->Deliver(m);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("epoch 6 refused"), std::string::npos);
  m.set_epoch(7);
  m.set_from(9);
  EXPECT_EQ(group.grpc_member(0)->Deliver(m).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Nothing stale was stored: a real collective still sees only fresh messages.
  m.set_from(1);
  m.set_payload("fresh");
  EXPECT_TRUE(group.grpc_member(0)->Deliver(m).ok());
  EXPECT_EQ(group.grpc_member(0)->Deliver(m).error_code(), grpc::StatusCode::ALREADY_EXISTS);
}

TEST(GrpcExchangeTest, GarbageOrTruncatedBytesAreRefusedNotStored) {
  // Without same-host reads every message completes at once (a by-address block is refused).
  GrpcGroup group(2, std::chrono::milliseconds(300), /*same_host_reads=*/false);
  auto deliver = [&](const std::string& bytes) { return DeliverBytes(group.grpc_member(0), bytes); };
  EXPECT_EQ(deliver("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // A header that promises 1000 payload bytes and carries 3.
  EXPECT_EQ(deliver(Header(7, 1, 1, 1000) + "abc").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  std::mt19937 rng(5);
  for (int i = 0; i < 2000; ++i) {  // random bytes: refused or stored, never a crash
    std::string junk(rng() % 64, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    deliver(junk);
  }
  // The collective then still works, with a real message from member 1.
  EXPECT_TRUE(deliver(Header(7, 99, 1, 2) + "ok").ok());
  std::thread peer([&] { (void)group.grpc_member(1)->AllToAll(99, {"ok", ""}); });
  auto got = group.grpc_member(0)->AllToAll(99, {"", ""});
  peer.join();
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ((*got)[1], "ok");
}

TEST(GrpcExchangeTest, PeersOnOneHostSwitchToReadingBlocksByAddressAndRefuseItWhenOff) {
  GrpcGroup group(2, std::chrono::seconds(10));
  EXPECT_FALSE(group.grpc_member(0)->SendsByAddressTo(1));
  auto collective = [&](uint64_t tag) {
    std::vector<absl::StatusOr<std::vector<std::string>>> got(2);
    std::thread peer([&] { got[1] = group.grpc_member(1)->AllToAll(tag, {std::string(70000, 'b'), "to self"}); });
    got[0] = group.grpc_member(0)->AllToAll(tag, {"to self", std::string(90000, 'a')});
    peer.join();
    return got;
  };
  auto first = collective(1);  // inline, with probes
  ASSERT_THAT(first[0], IsOk());
  EXPECT_TRUE(group.grpc_member(0)->SendsByAddressTo(1)) << "the peer read the probe in this process";
  EXPECT_TRUE(group.grpc_member(1)->SendsByAddressTo(0));
  for (uint64_t tag = 2; tag <= 4; ++tag) {  // by address now
    auto got = collective(tag);
    ASSERT_THAT(got[0], IsOk());
    ASSERT_THAT(got[1], IsOk());
    EXPECT_EQ((*got[0])[1], std::string(70000, 'b'));
    EXPECT_EQ((*got[1])[0], std::string(90000, 'a'));
  }
  // A member that does not read peers' memory refuses a by-address block at once.
  GrpcGroup off(2, std::chrono::seconds(1), /*same_host_reads=*/false);
  v1::ExchangeMessage m;
  m.set_epoch(7);
  m.set_tag(1);
  m.set_from(1);
  m.mutable_same_host()->set_pid(getpid());
  m.mutable_same_host()->set_address(1);
  m.mutable_same_host()->set_bytes(8);
  EXPECT_EQ(off.grpc_member(0)->Deliver(m).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST(GrpcExchangeTest, AbortEndsACollectiveWaitingForADeadPeerAtOnce) {
  // Member 1 never enters (it "died"); member 0 would wait a minute for it. A new shard map aborts
  // member 0's exchange: the collective returns the abort status well before its deadline.
  GrpcGroup group(2, std::chrono::seconds(60));
  absl::Status result;
  const auto start = std::chrono::steady_clock::now();
  std::thread waiter([&] { result = group.grpc_member(0)->AllToAll(3, {"a", "b"}).status(); });
  group.grpc_member(0)->Abort(absl::AbortedError("superseded by shard map epoch 8"));
  waiter.join();
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kAborted, "epoch 8"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
  // And for good: a later collective fails the same way instead of waiting.
  EXPECT_THAT(group.grpc_member(0)->AllToAll(4, {"a", "b"}), StatusIs(absl::StatusCode::kAborted, "epoch 8"));
}

}  // namespace
}  // namespace moe
