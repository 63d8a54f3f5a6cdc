// The simulator core against cases computed by hand.
#include <tuple>
#include <vector>

#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "simulation/compute.h"
#include "simulation/network.h"
#include "simulation/presets.h"
#include "simulation/simulator.h"
#include "simulation/topology.h"
#include "simulation/topology_config.h"

namespace moe::sim {
namespace {

using ::moe::testing::IsOk;
using ::moe::testing::StatusIs;

constexpr double kGBs = 1e9;  // bytes per second

TEST(SimulatorTest, EventsRunInTimeThenSchedulingOrder) {
  Simulator sim;
  std::vector<int> order;
  sim.At(20, [&] { order.push_back(3); });
  sim.At(10, [&] { order.push_back(1); });
  sim.At(10, [&] { order.push_back(2); });
  sim.At(10, [&] {
    sim.After(0, [&] { order.push_back(5); });  // same time, scheduled later: runs after the others
    order.push_back(4);
  });
  EXPECT_EQ(sim.Run(), 5u);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 4, 5, 3}));
  EXPECT_EQ(sim.now(), 20);
}

TEST(SimulatorTest, RunStopsAtTheHorizonAndResumes) {
  Simulator sim;
  int ran = 0;
  for (Nanos t : {5, 15, 25}) sim.At(t, [&] { ++ran; });
  EXPECT_EQ(sim.Run(15), 2u);
  EXPECT_EQ(ran, 2);
  EXPECT_EQ(sim.Run(), 1u);
}

TEST(SimulatorTest, RandomStreamsAreReproducibleAndIndependent) {
  Simulator a(7), b(7), c(8);
  RandomStream a0 = a.Stream(0), b0 = b.Stream(0), a1 = a.Stream(1), c0 = c.Stream(0);
  int same_stream_other_id = 0, same_id_other_seed = 0;
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a0.NextU64();
    ASSERT_EQ(x, b0.NextU64());
    same_stream_other_id += x == a1.NextU64();
    same_id_other_seed += x == c0.NextU64();
  }
  EXPECT_EQ(same_stream_other_id, 0);
  EXPECT_EQ(same_id_other_seed, 0);
  double sum = 0;
  for (int i = 0; i < 100000; ++i) sum += a0.NextExponential(3.0);
  EXPECT_NEAR(sum / 100000, 3.0, 0.05);
}

TEST(NetworkTest, OneTransferTakesSizeOverBandwidthPlusLatency) {
  Simulator sim;
  Network net(&sim);
  MOE_ASSERT_OK_AND_ASSIGN(int link, (net.AddLink({"l", 1 * kGBs, 1000})));
  Nanos arrived = -1;
  ASSERT_THAT(net.StartFlow({link}, 1e6, [&] { arrived = sim.now(); }), IsOk());
  sim.Run();
  EXPECT_EQ(arrived, 1'000'000 + 1000);  // 1 MB at 1 GB/s = 1 ms, plus 1 us
  EXPECT_DOUBLE_EQ(net.carried_bytes(link), 1e6);
}

TEST(NetworkTest, TwoFlowsShareALinkEquallyUntilOneEnds) {
  Simulator sim;
  Network net(&sim);
  MOE_ASSERT_OK_AND_ASSIGN(int link, (net.AddLink({"l", 1 * kGBs, 0})));
  Nanos small = -1, large = -1;
  ASSERT_THAT(net.StartFlow({link}, 1e6, [&] { small = sim.now(); }), IsOk());
  ASSERT_THAT(net.StartFlow({link}, 2e6, [&] { large = sim.now(); }), IsOk());
  sim.Run();
  // Both at 0.5 GB/s: the 1 MB flow ends at 2 ms; the other has 1 MB left, alone at 1 GB/s: 3 ms.
  EXPECT_EQ(small, 2'000'000);
  EXPECT_EQ(large, 3'000'000);
}

TEST(NetworkTest, MaxMinFairnessGivesABottleneckedFlowsLeftoverToTheOthers) {
  Simulator sim;
  Network net(&sim);
  MOE_ASSERT_OK_AND_ASSIGN(int shared, (net.AddLink({"shared", 1 * kGBs, 0})));
  MOE_ASSERT_OK_AND_ASSIGN(int thin, (net.AddLink({"thin", 0.25 * kGBs, 0})));
  Nanos a = -1, b = -1;
  // B is held to 0.25 GB/s by the thin link, so A gets the remaining 0.75 GB/s of the shared one.
  ASSERT_THAT(net.StartFlow({shared}, 0.75e6, [&] { a = sim.now(); }), IsOk());
  ASSERT_THAT(net.StartFlow({shared, thin}, 0.25e6, [&] { b = sim.now(); }), IsOk());
  sim.Run();
  EXPECT_EQ(a, 1'000'000);
  EXPECT_EQ(b, 1'000'000);
}

TEST(NetworkTest, BadLinksAndFlowsAreRefusedNamingTheField) {
  Simulator sim;
  Network net(&sim);
  EXPECT_THAT(net.AddLink({"nic0", 0, 0}), StatusIs(absl::StatusCode::kInvalidArgument, "link 'nic0': bandwidth"));
  EXPECT_THAT(net.AddLink({"nic1", 1e9, -5}), StatusIs(absl::StatusCode::kInvalidArgument, "link 'nic1': latency"));
  EXPECT_THAT(net.StartFlow({3}, 10, [] {}), StatusIs(absl::StatusCode::kInvalidArgument, "no link 3"));
  Topology topo(&net);
  const int a = topo.AddNode("a");
  EXPECT_THAT(topo.Connect(a, 7, {"to-nowhere", 1e9, 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, "link 'to-nowhere' connects a node that does not exist"));
  const int b = topo.AddNode("b");
  EXPECT_THAT(topo.Route(a, b), StatusIs(absl::StatusCode::kNotFound, "no route from a to b"));
}

TEST(AllToAllTest, DirectAllToAllOnAUnidirectionalRingByHand) {
  // 4 nodes, links i -> i+1 (mod 4) at 1 GB/s. Each node sends 1 MB to each other node along the ring:
  // a link carries 1 + 2 + 3 = 6 flows (those going 1, 2 and 3 hops), all links alike, so every flow
  // gets 1/6 GB/s throughout and all 12 end together at 6 MB / 1 GB/s = 6 ms.
  Simulator sim;
  Network net(&sim);
  Topology ring(&net);
  for (int i = 0; i < 4; ++i) ring.AddNode("n" + std::to_string(i));
  for (int i = 0; i < 4; ++i) ASSERT_THAT(ring.Connect(i, (i + 1) % 4, {"ring", 1 * kGBs, 0}), IsOk());
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<int> route, ring.Route(3, 2));
  EXPECT_EQ(route.size(), 3u);
  std::vector<std::vector<double>> bytes(4, std::vector<double>(4, 1e6));
  Nanos finished = -1;
  ASSERT_THAT(DirectAllToAll(ring, net, bytes, [&] { finished = sim.now(); }), IsOk());
  sim.Run();
  EXPECT_EQ(finished, 6'000'000);
  for (int l = 0; l < 4; ++l) EXPECT_DOUBLE_EQ(net.carried_bytes(l), 6e6);
}

TEST(AllToAllTest, SkewedTrafficFinishesWithTheBusiestLink) {
  // Two nodes joined both ways at 1 GB/s; 3 MB one way and 1 MB back: the links are independent.
  Simulator sim;
  Network net(&sim);
  Topology pair(&net);
  pair.AddNode("a");
  pair.AddNode("b");
  ASSERT_THAT(pair.Connect(0, 1, {"ab", 1 * kGBs, 2000}), IsOk());
  ASSERT_THAT(pair.Connect(1, 0, {"ba", 1 * kGBs, 2000}), IsOk());
  Nanos finished = -1;
  ASSERT_THAT(DirectAllToAll(pair, net, {{0, 3e6}, {1e6, 0}}, [&] { finished = sim.now(); }), IsOk());
  sim.Run();
  EXPECT_EQ(finished, 3'000'000 + 2000);
}

TEST(AllToAllTest, HierarchicalAllToAllOnTwoHostsOfTwoByHand) {
  // Hosts 0 and 1 with two nodes each. Inside a host, nodes are joined both ways at 100 GB/s; across
  // hosts only same-local-rank nodes are joined ("rails"), both ways at 10 GB/s. Every node sends 1 MB to
  // every other node. Phase 1: each node sends 2 MB over its rail (both MB for the other host) in 200 us,
  // while the 1 MB to its host-mate takes 10 us on the fast link. Phase 2: each relay forwards 1 MB to
  // its host-mate, 10 us. Total 210 us.
  Simulator sim;
  Network net(&sim);
  Topology topo(&net);
  const std::vector<int> host = {0, 0, 1, 1}, local = {0, 1, 0, 1};
  for (int i = 0; i < 4; ++i) topo.AddNode("gpu" + std::to_string(i));
  for (auto [a, b, bw] : std::vector<std::tuple<int, int, double>>{{0, 1, 100}, {2, 3, 100}, {0, 2, 10}, {1, 3, 10}}) {
    ASSERT_THAT(topo.Connect(a, b, {"l", bw * kGBs, 0}), IsOk());
    ASSERT_THAT(topo.Connect(b, a, {"l", bw * kGBs, 0}), IsOk());
  }
  std::vector<std::vector<double>> bytes(4, std::vector<double>(4, 1e6));
  Nanos finished = -1;
  ASSERT_THAT(HierarchicalAllToAll(topo, net, bytes, host, local, [&] { finished = sim.now(); }), IsOk());
  sim.Run();
  EXPECT_EQ(finished, 210'000);
  EXPECT_THAT(HierarchicalAllToAll(topo, net, bytes, {0, 0, 1, 1}, {0, 1, 0, 2}, [] {}),
              StatusIs(absl::StatusCode::kNotFound, "host 1 has no local rank 1"));
}

TEST(TopologyConfigTest, BuildsTheRingFromJsonAndRunsTheSameAllToAll) {
  Simulator sim;
  Network net(&sim);
  Topology ring(&net);
  ASSERT_THAT(BuildTopologyFromJson(R"({"nodes": ["n0", "n1", "n2", "n3"], "links": [
      {"from": "n0", "to": "n1", "bandwidth_gbps": 1, "bidirectional": false},
      {"from": "n1", "to": "n2", "bandwidth_gbps": 1, "bidirectional": false},
      {"from": "n2", "to": "n3", "bandwidth_gbps": 1, "bidirectional": false},
      {"from": "n3", "to": "n0", "bandwidth_gbps": 1, "latency_ns": 0, "bidirectional": false}]})", &ring),
              IsOk());
  Nanos finished = -1;
  ASSERT_THAT(DirectAllToAll(ring, net, std::vector<std::vector<double>>(4, std::vector<double>(4, 1e6)),
                             [&] { finished = sim.now(); }),
              IsOk());
  sim.Run();
  EXPECT_EQ(finished, 6'000'000);
}

TEST(TopologyConfigTest, BadConfigsNameTheField) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{", "not valid JSON"},
      {R"({"links": []})", "'nodes' must be a non-empty array"},
      {R"({"nodes": ["a", "a"], "links": []})", "nodes[1]: duplicate node 'a'"},
      {R"({"nodes": ["a", "b"], "links": [{"from": "a", "to": "c", "bandwidth_gbps": 1}]})", "links[0].to: no node 'c'"},
      {R"({"nodes": ["a", "b"], "links": [{"from": "a", "to": "b", "bandwidth_gbps": 0}]})", "links[0].bandwidth_gbps must be"},
      {R"({"nodes": ["a", "b"], "links": [{"from": "a", "to": "b", "bandwidth_gbps": 1, "latency_ns": -3}]})",
       "links[0].latency_ns must be"},
      {R"({"nodes": ["a"], "links": [{"to": "a", "bandwidth_gbps": 1}]})", "links[0].from must name a node"},
  };
  for (const auto& [json, message] : cases) {
    Simulator sim;
    Network net(&sim);
    Topology topo(&net);
    EXPECT_THAT(BuildTopologyFromJson(json, &topo), StatusIs(absl::StatusCode::kInvalidArgument, message)) << json;
  }
}

TEST(PresetTest, SingleNodeAllToAllThroughTheNvSwitchByHand) {
  // 8 GPUs, each joined to the NVSwitch at 150 GB/s and 1 us. Each sends 1 MB to the 7 others: every
  // GPU's uplink and downlink carry 7 flows, so each flow runs at 150/7 GB/s: 7 MB / 150 GB/s = 46,667 ns
  // (rounded up to whole ns), plus 2 us of latency (up and down).
  Simulator sim;
  Network net(&sim);
  Topology topo(&net);
  MOE_ASSERT_OK_AND_ASSIGN(Placement p, SingleNode(ClusterShape{}, &topo));
  ASSERT_EQ(p.nodes.size(), 8u);
  std::vector<std::vector<double>> bytes;
  std::vector<int> host, local;
  p.Expand(topo.num_nodes(), std::vector<std::vector<double>>(8, std::vector<double>(8, 1e6)), &bytes, &host, &local);
  Nanos finished = -1;
  ASSERT_THAT(DirectAllToAll(topo, net, bytes, [&] { finished = sim.now(); }), IsOk());
  sim.Run();
  EXPECT_EQ(finished, 46'667 + 2'000);
}

TEST(PresetTest, RailOptimizedRoutesSameRankTrafficOverItsRailAndFatTreeOverTheSpine) {
  Simulator sim;
  Network net(&sim);
  Topology rails(&net);
  ClusterShape shape;
  shape.hosts = 4;
  MOE_ASSERT_OK_AND_ASSIGN(Placement p, RailOptimized(shape, &rails));
  ASSERT_EQ(p.nodes.size(), 32u);
  // h0.g3 -> h2.g3: NIC up to rail 3 and down: 2 links, both NICs.
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<int> path, rails.Route(p.nodes[3], p.nodes[2 * 8 + 3]));
  ASSERT_EQ(path.size(), 2u);
  EXPECT_EQ(net.link(path[0]).name, "h0.nic3.tx");
  EXPECT_EQ(net.link(path[1]).name, "h2.nic3.rx");

  Simulator sim2;
  Network net2(&sim2);
  Topology tree(&net2);
  shape.hosts_per_leaf = 2;
  MOE_ASSERT_OK_AND_ASSIGN(Placement q, FatTree(shape, &tree));
  // h0 and h3 sit under different leaves: NIC, leaf uplink, spine downlink, NIC.
  MOE_ASSERT_OK_AND_ASSIGN(path, tree.Route(q.nodes[0], q.nodes[3 * 8]));
  EXPECT_EQ(path.size(), 4u);
  EXPECT_THAT(FatTree(ClusterShape{.hosts = 0}, &tree), StatusIs(absl::StatusCode::kInvalidArgument, "hosts must be >= 1"));
}

TEST(ComputeTest, ExpertTimeIsMemoryBoundAtOneTokenAndComputeBoundAtManyByHand) {
  // Hidden 4096, FFN 14336, BF16: 3 x 4096 x 14336 x 2 B = 352,321,536 B of weights.
  DeviceProfile d{"test", 1e15, 3e12, {{1, 0.1}, {1001, 0.6}}};
  ASSERT_THAT(d.Validate(), IsOk());
  // 1 token: 0.35 GFLOP at 10% of 1 PFLOP/s = 3.5 us < 352 MB / 3 TB/s = 117,441 ns (rounded up).
  EXPECT_EQ(ExpertFfnTime(d, 1, 4096, 14336, 2), 117'441);
  // 4096 tokens: 6 x 4096 x 4096 x 14336 = 1.4431e12 FLOP at 60% of 1 PFLOP/s = 2,405,181.4 ns, rounded up.
  EXPECT_EQ(ExpertFfnTime(d, 4096, 4096, 14336, 2), 2'405'182);
  EXPECT_DOUBLE_EQ(d.EfficiencyAt(501), 0.35);  // halfway along the curve
  EXPECT_EQ(ExpertFfnTime(d, 0, 4096, 14336, 2), 0);
  EXPECT_THAT((DeviceProfile{"bad", 0, 1, {}}.Validate()), StatusIs(absl::StatusCode::kInvalidArgument, "'bad': peak_flops"));
  EXPECT_THAT((DeviceProfile{"curve", 1, 1, {{8, 0.5}, {4, 0.6}}}.Validate()),
              StatusIs(absl::StatusCode::kInvalidArgument, "efficiency[1]"));
  EXPECT_THAT(H100Profile().Validate(), IsOk());
  EXPECT_THAT(H200Profile().Validate(), IsOk());
  EXPECT_THAT(A100Profile().Validate(), IsOk());
}

TEST(AllToAllTest, TheSameInputsGiveTheSameEventsBitForBit) {
  auto run = [] {
    Simulator sim(3);
    Network net(&sim);
    Topology ring(&net);
    for (int i = 0; i < 5; ++i) ring.AddNode("n" + std::to_string(i));
    for (int i = 0; i < 5; ++i) EXPECT_THAT(ring.Connect(i, (i + 1) % 5, {"r", 1.3 * kGBs, 700}), IsOk());
    RandomStream r = sim.Stream(0);
    std::vector<std::vector<double>> bytes(5, std::vector<double>(5));
    for (auto& row : bytes) {
      for (double& b : row) b = std::floor(r.NextUniform() * 1e6);
    }
    std::vector<Nanos> trace;
    EXPECT_THAT(DirectAllToAll(ring, net, bytes, [&] { trace.push_back(sim.now()); }), IsOk());
    sim.Run();
    trace.push_back(static_cast<Nanos>(sim.events_run()));
    return trace;
  };
  EXPECT_EQ(run(), run());
}

}  // namespace
}  // namespace moe::sim
