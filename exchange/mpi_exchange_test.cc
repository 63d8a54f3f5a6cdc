// The Exchange suite's checks against the MPI backend; CTest runs it under mpirun with several ranks.
#include "exchange/mpi_exchange.h"

#include "common/status_matchers.h"
#include "exchange/exchange_test_groups.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::moe::testing::IsOk;
using ::moe::testing::StatusIs;

TEST(MpiExchangeTest, AllToAllDeliversEveryBufferToItsDestination) {
  MpiExchange ex(MPI_COMM_WORLD);
  ASSERT_GE(ex.size(), 1);
  for (uint64_t tag = 1; tag <= 20; ++tag) {
    std::vector<std::string> send;
    for (int to = 0; to < ex.size(); ++to) send.push_back(ExchangeTestPayload(tag, ex.rank(), to));
    auto recv = ex.AllToAll(tag, std::move(send));
    ASSERT_THAT(recv, IsOk());
    for (int from = 0; from < ex.size(); ++from) ASSERT_EQ((*recv)[from], ExchangeTestPayload(tag, from, ex.rank())) << from;
  }
  EXPECT_THAT(ex.Barrier(1000), IsOk());
}

TEST(MpiExchangeTest, RanksInDifferentCollectivesFailInsteadOfMixingData) {
  MpiExchange ex(MPI_COMM_WORLD);
  if (ex.size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto r = ex.AllToAll(ex.rank() == 0 ? 7 : 8, std::vector<std::string>(static_cast<size_t>(ex.size()), "x"));
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kFailedPrecondition, "collective mismatch"));
  EXPECT_THAT(ex.Barrier(2000), IsOk());  // and the ranks stay usable
}

TEST(MpiExchangeTest, RejectsWrongNumberOfBuffers) {
  MpiExchange ex(MPI_COMM_WORLD);
  EXPECT_THAT(ex.AllToAll(1, std::vector<std::string>(static_cast<size_t>(ex.size()) + 1)),
              StatusIs(absl::StatusCode::kInvalidArgument, "one buffer per member"));
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {  // one rank reports; every rank's result decides the exit code
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS() != 0, any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any_failed;
}
