#include "coordinator/batching.h"

#include "gtest/gtest.h"

namespace moe {
namespace {

TEST(BatchAdmissionTest, FifoStopsAtTheFirstRequestThatDoesNotFitTheTokenBudget) {
  BatchAdmission admission({.max_running = 8, .max_batch_tokens = 10});
  admission.BeginStep({0, 0});
  EXPECT_EQ(admission.Admit(6, -1), 0);
  EXPECT_EQ(admission.Admit(5, -1), std::nullopt);  // 6 + 5 > 10
  EXPECT_EQ(admission.Admit(4, -1), 1);            // a later, smaller one would fit: the caller stops anyway
  admission.BeginStep({1, 1});                      // a new step has a fresh budget
  EXPECT_EQ(admission.Admit(10, -1), 0);
}

TEST(BatchAdmissionTest, RunningSlotsBoundTheBatch) {
  BatchAdmission admission({.max_running = 3, .max_batch_tokens = 100});
  admission.BeginStep({1, 1});
  EXPECT_EQ(admission.Admit(1, -1), 0);
  EXPECT_EQ(admission.Admit(1, -1), std::nullopt);
}

TEST(BatchAdmissionTest, LeastLoadedRankWithRoundRobinTies) {
  BatchAdmission admission({.max_running = 64, .max_batch_tokens = 100});
  admission.BeginStep({2, 0, 1});
  EXPECT_EQ(admission.Admit(1, -1), 1);  // least loaded
  EXPECT_EQ(admission.Admit(1, -1), 2);  // 1 and 2 tie at one: round-robin after rank 1
  EXPECT_EQ(admission.Admit(1, -1), 1);  // {2, 1, 2}: least loaded again
  EXPECT_EQ(admission.Admit(1, -1), 2);  // all at two: the next after rank 1
  admission.BeginStep({0, 0, 0});
  EXPECT_EQ(admission.Admit(1, -1), 0);  // the rotation persists across steps
}

TEST(BatchAdmissionTest, HomeRankWinsAndCountsAsLoad) {
  BatchAdmission admission({.max_running = 64, .max_batch_tokens = 100});
  admission.BeginStep({0, 0});
  EXPECT_EQ(admission.Admit(1, 1), 1);
  EXPECT_EQ(admission.Admit(1, 1), 1);
  EXPECT_EQ(admission.Admit(1, -1), 0);
  EXPECT_EQ(admission.Admit(1, 7), 0);  // out of range: no home (rank 0 has 1, rank 1 has 2)
}

TEST(BatchAdmissionTest, NoRanksAdmitsNothing) {
  BatchAdmission admission({});
  admission.BeginStep({});
  EXPECT_EQ(admission.Admit(1, -1), std::nullopt);
}

}  // namespace
}  // namespace moe
