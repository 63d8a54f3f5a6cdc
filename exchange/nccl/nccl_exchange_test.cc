// The Exchange checks on the NCCL backend with one rank. Skips (never fails) where no GPU is present;
// CI has none, so there it only proves the backend builds and links.
#include "exchange/nccl/nccl_exchange.h"

#include "common/status_matchers.h"
#include "exchange/exchange_test_groups.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

TEST(NcclExchangeTest, OneRankAllToAllReturnsItsOwnBuffers) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) GTEST_SKIP() << "no CUDA device here";
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  auto ex = NcclExchange::Create(id, 0, 1, 0);
  ASSERT_TRUE(ex.ok()) << ex.status();
  for (uint64_t tag = 1; tag <= 20; ++tag) {
    auto recv = (*ex)->AllToAll(tag, {ExchangeTestPayload(tag, 0, 0)});
    ASSERT_TRUE(recv.ok()) << recv.status();
    ASSERT_EQ((*recv)[0], ExchangeTestPayload(tag, 0, 0)) << tag;
  }
}

TEST(NcclExchangeTest, CommunicatorIdsAreMadeWithoutAGpuAndParsedBack) {
  auto a = NewNcclCommunicatorId();
  auto b = NewNcclCommunicatorId();
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->size(), sizeof(ncclUniqueId));
  EXPECT_NE(*a, *b) << "each epoch gets its own communicator";
  auto parsed = ParseNcclCommunicatorId(*a);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(std::string(parsed->internal, sizeof(parsed->internal)), *a);
  EXPECT_EQ(ParseNcclCommunicatorId("short").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NcclExchangeTest, OneRankAllToAllVReusesCallerBuffers) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) GTEST_SKIP() << "no CUDA device here";
  auto id = NewNcclCommunicatorId();
  ASSERT_TRUE(id.ok()) << id.status();
  auto unique = ParseNcclCommunicatorId(*id);
  ASSERT_TRUE(unique.ok());
  auto ex = NcclExchange::Create(*unique, 0, 1, 0);
  ASSERT_TRUE(ex.ok()) << ex.status();
  ExchangeBuffer send, recv;
  for (uint64_t tag = 1; tag <= 10; ++tag) {
    const std::string payload = ExchangeTestPayload(tag, 0, 0);
    CopyIntoBlocks({payload}, &send);
    ASSERT_TRUE((*ex)->AllToAllV(tag, send, &recv).ok());
    ASSERT_EQ(std::string(recv.block(0), recv.block_size(0)), payload) << tag;
  }
}

}  // namespace
}  // namespace moe
