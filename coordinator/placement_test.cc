#include "coordinator/placement.h"

#include <filesystem>
#include <fstream>

#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::moe::testing::StatusIs;

ModelConfig Config(int64_t layers, int64_t experts) {
  ModelConfig c;
  c.num_layers = layers;
  c.num_experts = experts;
  c.top_k = 2;
  return c;
}

TEST(PlacementTest, UniformLoadSpreadsExpertsEvenly) {
  auto m = PlaceExperts(Config(2, 8), 4, {}, {}, 3);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->epoch, 3u);
  for (int64_t l = 0; l < 2; ++l) {
    std::vector<int> per_worker(4, 0);
    for (const auto& owners : m->owners[l]) {
      ASSERT_EQ(owners.size(), 1u);
      ++per_worker[owners[0]];
    }
    for (int n : per_worker) EXPECT_EQ(n, 2);
  }
}

TEST(PlacementTest, BalancesMeasuredLoadAndReplicatesHotExperts) {
  // Expert 0 carries as much as all others together: it gets its own worker, and a replica when allowed.
  std::vector<std::vector<double>> load = {{70, 10, 10, 10, 10, 10, 10, 10}};
  auto m = PlaceExperts(Config(1, 8), 2, load, {}, 1);
  ASSERT_TRUE(m.ok());
  const int hot = m->owners[0][0][0];
  for (int e = 1; e < 8; ++e) EXPECT_NE(m->owners[0][e][0], hot) << e;  // 70 vs 7 x 10

  auto r = PlaceExperts(Config(1, 8), 2, load, {.replicate_above = 2.0}, 1);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->owners[0][0].size(), 2u);
  EXPECT_NE(r->owners[0][0][0], r->owners[0][0][1]);
}

TEST(PlacementTest, RejectsBadInput) {
  EXPECT_THAT(PlaceExperts(Config(1, 4), 0, {}, {}, 1), StatusIs(absl::StatusCode::kInvalidArgument, "at least one worker"));
  EXPECT_THAT(PlaceExperts(Config(2, 4), 2, {{1, 1, 1, 1}}, {}, 1), StatusIs(absl::StatusCode::kInvalidArgument, "1 layers"));
  EXPECT_THAT(PlaceExperts(Config(1, 4), 2, {{1, 1}}, {}, 1), StatusIs(absl::StatusCode::kInvalidArgument, "has 2 experts"));
}

TEST(PlacementTest, ReadsMeasuredLoadFromEvaluatorJsonAndRejectsWrongShapes) {
  const auto dir = std::filesystem::temp_directory_path();
  const std::string eval_json = (dir / "moe_placement_eval.json").string();
  std::ofstream(eval_json) << R"({"tasks": {"a": {"expert_usage": [[1, 2, 3, 4], [0, 0, 0, 8]]},
                                              "b": {"expert_usage": [[1, 0, 0, 0], [8, 0, 0, 0]]}}})";
  auto load = ReadExpertLoadFile(eval_json, Config(2, 4));
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ((*load)[0], (std::vector<double>{2, 2, 3, 4}));
  EXPECT_EQ((*load)[1], (std::vector<double>{8, 0, 0, 8}));
  auto m = PlaceExperts(Config(2, 4), 2, *load, {}, 1);
  ASSERT_TRUE(m.ok());
  EXPECT_NE(m->owners[1][0][0], m->owners[1][3][0]);  // the two hot experts of layer 1 go apart

  EXPECT_THAT(ReadExpertLoadFile(eval_json, Config(3, 4)), StatusIs(absl::StatusCode::kInvalidArgument, "one row per layer"));
  EXPECT_THAT(ReadExpertLoadFile(eval_json, Config(2, 5)), StatusIs(absl::StatusCode::kInvalidArgument, "must list 5 experts"));
  std::ofstream(eval_json) << "{broken";
  EXPECT_THAT(ReadExpertLoadFile(eval_json, Config(2, 4)), StatusIs(absl::StatusCode::kInvalidArgument, "not a JSON object"));
}

}  // namespace
}  // namespace moe
