#include "worker/distributed_dispatcher.h"

#include <filesystem>
#include <thread>

#include "checkpoint/random_checkpoint.h"
#include "common/status.h"
#include "common/status_matchers.h"
#include "common/test_dir.h"
#include "engine/model.h"
#include "exchange/exchange_test_groups.h"
#include "gtest/gtest.h"
#include "worker/data_plane.h"

namespace moe {
namespace {

using ::moe::testing::IsOk;
using ::moe::testing::StatusIs;

std::string Checkpoint() {
  static const std::string dir = [] {
    auto d = ::moe::testing::ScratchDir("dispatch_test");
    RandomCheckpointOptions o;
    o.num_layers = 3;
    o.tokenizer = false;
    EXPECT_THAT(WriteRandomCheckpoint(d.string(), o), IsOk());
    return d.string();
  }();
  return dir;
}

// Round-robin placement with expert 0 of layer 1 replicated on every worker.
ShardMap Placement(const ModelConfig& c, int workers) {
  ShardMap m;
  m.num_workers = workers;
  m.owners.resize(static_cast<size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    for (int64_t e = 0; e < c.num_experts; ++e) m.owners[l].push_back({static_cast<int>(e % workers)});
  }
  for (int w = 1; w < workers; ++w) m.owners[1][0].push_back(w);
  return m;
}

// Over every Exchange backend that runs in one process (gRPC: real servers on loopback ports).
class ShardedLogitsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ShardedLogitsTest, ShardedWorkersReproduceTheSingleProcessLogits) {
  const std::vector<std::vector<int32_t>> prompts = {{1, 5, 9, 33}, {1, 200, 3, 4, 5, 6, 7}, {1}, {1, 44, 45}, {1, 7, 7, 7, 8}};
  // Layer paths differ per worker, so workers must agree on the repeat passes some of them ask for.
  const std::vector<LayerPath> paths = {{}, {1, 2, 1}, {0, 1, 1}, {}, {1, 0, 2}};
  ThreadPool pool(1);
  MOE_ASSERT_OK_AND_ASSIGN(auto source, ModelSource::Open(Checkpoint()));
  std::shared_ptr<const ModelSource> shared = std::move(source);
  MOE_ASSERT_OK_AND_ASSIGN(auto full_weights, LoadModelWeights(shared, {}, &pool));
  Model single(std::move(full_weights), &pool);
  const int64_t vocab = single.config().vocab_size;
  std::vector<std::vector<float>> expected;
  for (const auto& p : prompts) {
    auto cache = single.NewCache();
    ASSERT_THAT(cache->SetLayerPath(paths[expected.size()]), IsOk());
    ForwardInput in{cache.get(), p};
    MOE_ASSERT_OK_AND_ASSIGN(auto logits, single.Forward({&in, 1}));
    expected.push_back(logits);
  }

  for (int workers : {1, 2, 4}) {
    const ShardMap map = Placement(single.config(), workers);
    auto group = MakeGroup(GetParam(), workers, std::chrono::seconds(10));
    std::vector<absl::Status> status(static_cast<size_t>(workers));
    std::vector<std::vector<std::vector<float>>> got(static_cast<size_t>(workers));
    std::vector<int64_t> bytes(static_cast<size_t>(workers));
    std::vector<std::thread> threads;
    for (int w = 0; w < workers; ++w) {
      threads.emplace_back([&, w] {
        ThreadPool local_pool(1);
        LoadOptions load;
        load.owns_expert = [&](int64_t l, int64_t e) { return map.Owns(w, l, e); };
        auto weights = LoadModelWeights(shared, load, &local_pool);
        if (!weights.ok()) {
          status[w] = weights.status();
          return;
        }
        DistributedExpertDispatcher dispatcher(weights->get(), &map, group->Member(w), &local_pool);
        Model model(std::move(*weights), &local_pool, &dispatcher);
        // Sequences are dealt round-robin; a worker with none still enters every collective.
        std::vector<std::unique_ptr<KvCache>> caches;
        std::vector<ForwardInput> inputs;
        int64_t rows = 0;
        for (size_t i = w; i < prompts.size(); i += workers) {
          caches.push_back(model.NewCache());
          status[w] = caches.back()->SetLayerPath(paths[i]);
          inputs.push_back({caches.back().get(), prompts[i]});
          rows += static_cast<int64_t>(prompts[i].size());
        }
        dispatcher.BeginStep(1, rows);
        auto logits = model.Forward(inputs);
        status[w] = logits.status();
        if (!logits.ok()) return;
        for (size_t j = 0; j < inputs.size(); ++j) {
          got[w].emplace_back(logits->begin() + j * vocab, logits->begin() + (j + 1) * vocab);
        }
        for (int64_t b : dispatcher.traffic().per_layer) bytes[w] += b;
      });
    }
    for (auto& t : threads) t.join();
    for (int w = 0; w < workers; ++w) ASSERT_THAT(status[w], IsOk()) << "worker " << w << " of " << workers;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const auto& row = got[i % workers][i / workers];
      for (int64_t v = 0; v < vocab; ++v) ASSERT_NEAR(row[v], expected[i][v], 1e-5) << workers << " workers, prompt " << i;
    }
    if (workers == 1) EXPECT_EQ(bytes[0], 0);  // nothing crosses a process boundary
    else EXPECT_GT(bytes[0] + bytes[1], 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, ShardedLogitsTest, ::testing::Values("in_process", "grpc"));

// An Exchange whose peer answers with garbage.
class GarbageExchange : public Exchange {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  absl::Status AllToAllV(uint64_t, const ExchangeBuffer& send, ExchangeBuffer* recv) override {
    std::vector<std::string> blocks = {std::string(send.block(0), send.block_size(0)),
                                       std::string("\x05\x00\x00\x00garbage", 11)};  // claims 5 records, holds 7 bytes
    CopyIntoBlocks(blocks, recv);
    return absl::OkStatus();
  }
};

TEST(DistributedDispatcherTest, AGarbagePeerMessageIsAnErrorNotACrash) {
  ThreadPool pool(1);
  MOE_ASSERT_OK_AND_ASSIGN(auto source, ModelSource::Open(Checkpoint()));
  MOE_ASSERT_OK_AND_ASSIGN(auto weights, LoadModelWeights(std::move(source), {}, &pool));
  ShardMap map = Placement(weights->config(), 2);
  GarbageExchange exchange;
  DistributedExpertDispatcher dispatcher(weights.get(), &map, &exchange, &pool);
  Model model(std::move(weights), &pool, &dispatcher);
  auto cache = model.NewCache();
  const std::vector<int32_t> prompt = {1, 2, 3};
  ForwardInput in{cache.get(), prompt};
  dispatcher.BeginStep(1, 3);
  EXPECT_THAT(model.Forward({&in, 1}), StatusIs(absl::StatusCode::kDataLoss, "malformed dispatch message from worker 1"));
}


TEST(DataPlaneTest, ChoicesAreCheckedAndTheNcclFactoryRefusesAMapWithoutAValidCommunicatorId) {
  EXPECT_THAT(CheckDataPlane("grpc"), IsOk());
  EXPECT_THAT(CheckDataPlane("tcp"), StatusIs(absl::StatusCode::kInvalidArgument, "grpc or nccl"));
  EXPECT_FALSE(ExchangeFactoryFor("grpc", 0)) << "gRPC is the worker's built-in default";
  if (!NcclDataPlaneBuilt()) {
    EXPECT_THAT(CheckDataPlane("nccl"), StatusIs(absl::StatusCode::kInvalidArgument, "no NCCL backend"));
    GTEST_SKIP() << "this build has no NCCL backend";
  }
  EXPECT_THAT(CheckDataPlane("nccl"), IsOk());
  auto factory = ExchangeFactoryFor("nccl", 0);
  ASSERT_TRUE(factory);
  ShardMap map;
  map.num_workers = 2;
  EXPECT_THAT(factory(0, map, "").status(), StatusIs(absl::StatusCode::kFailedPrecondition, "without a communicator id"));
  EXPECT_THAT(factory(0, map, "short").status(), StatusIs(absl::StatusCode::kInvalidArgument, "128 bytes"));
  if (CudaDeviceCount() == 0) {
    EXPECT_THAT(factory(0, map, std::string(128, 'x')).status(),
                StatusIs(absl::StatusCode::kFailedPrecondition, "needs a CUDA device"));
  }
}

}  // namespace
}  // namespace moe
