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

}  // namespace
}  // namespace moe
