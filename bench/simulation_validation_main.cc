// moe-bench-sim: the simulator against published figures and at scale.
//   build/bin/moe-bench-sim [--deepep] [--scale] [--scale-seconds 600] [--scale-rate 1000]
// DeepEP: its normal-mode setup (H800, 4096 tokens per GPU, hidden 7168, top-8 of 256 experts limited
// to 4 nodes, FP8 dispatch, BF16 combine; EP8 over NVLink ~160 GB/s, EP16/32/64 over ~50 GB/s RDMA with
// the hierarchical scheme) and its low-latency setup (128 tokens, EP8..EP256, every (token, expert) sent
// on its own), with the per-pair bytes drawn from that routing; prints predicted against published
// (DeepEP README) dispatch/combine bandwidths and times. The network has no calibration to DeepEP: links
// run at their nominal rate after a fixed latency, which is what the errors measure.
// Scale: a 1,024-GPU cluster (128 hosts of 8 H100, rail-optimized, 128 EP8 replicas of Qwen2-57B-A14B)
// serving --scale-seconds of Poisson traffic at --scale-rate requests/s; prints the wall time (target:
// under 60 s) and events/s.
#include <chrono>
#include <cmath>
#include <iostream>
#include <memory>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "common/flags.h"
#include "simulation/network.h"
#include "simulation/presets.h"
#include "simulation/report.h"
#include "simulation/serving.h"
#include "simulation/topology.h"
#include "simulation/workload.h"

ABSL_FLAG(bool, deepep, true, "compare with DeepEP's published dispatch/combine figures");
ABSL_FLAG(bool, scale, true, "time the 1,024-GPU run");
ABSL_FLAG(double, scale_seconds, 600, "simulated traffic for the scale run");
ABSL_FLAG(double, scale_rate, 1000, "requests per second for the scale run");
ABSL_FLAG(std::string, scale_model, "simulation/configs/qwen2-57b-a14b.json", "model of the scale run");

namespace {

using moe::sim::Nanos;

constexpr int kHidden = 7168, kExperts = 256, kTopK = 8, kGpusPerHost = 8, kNodeLimit = 4;
constexpr double kNvlink = 160e9, kRdma = 50e9;
constexpr Nanos kNvlinkLatency = 2000, kRdmaLatency = 4000;
// FP8 dispatch: 7168 bytes plus one float scale per 128 values; BF16 combine.
constexpr double kDispatchBytes = kHidden + kHidden / 128 * 4, kCombineBytes = 2.0 * kHidden;

// DeepSeek-V3 routing with uniform scores: each token picks kNodeLimit of the hosts, then kTopK distinct
// experts among theirs. Returns per (token, expert) the owner GPU.
std::vector<std::vector<int>> RouteTokens(int gpus, int tokens_per_gpu, moe::sim::RandomStream& rng) {
  const int hosts = std::max(1, gpus / kGpusPerHost), experts_per_gpu = kExperts / gpus;
  std::vector<std::vector<int>> owners;  // [source gpu * tokens + t] -> owner gpu per pick
  for (int g = 0; g < gpus; ++g) {
    for (int t = 0; t < tokens_per_gpu; ++t) {
      std::vector<int> allowed_hosts;
      for (int h = 0; h < hosts; ++h) allowed_hosts.push_back(h);
      for (int i = static_cast<int>(allowed_hosts.size()); i > 1; --i) std::swap(allowed_hosts[i - 1], allowed_hosts[rng.NextU64() % i]);
      allowed_hosts.resize(std::min(hosts, kNodeLimit));
      const int experts_per_host = experts_per_gpu * std::min(gpus, kGpusPerHost);
      std::vector<int> picked, picks;
      while (static_cast<int>(picked.size()) < kTopK) {
        const int h = allowed_hosts[rng.NextU64() % allowed_hosts.size()];
        const int e = h * experts_per_host + static_cast<int>(rng.NextU64() % experts_per_host);
        if (std::find(picked.begin(), picked.end(), e) != picked.end()) continue;
        picked.push_back(e);
        picks.push_back(e / experts_per_gpu);
      }
      owners.push_back(picks);
    }
  }
  return owners;
}

// Bytes from GPU i to GPU j: one copy per (token, destination GPU) (normal mode) or per (token, expert)
// (low latency).
std::vector<std::vector<double>> PairBytes(int gpus, int tokens_per_gpu, const std::vector<std::vector<int>>& owners,
                                           double record, bool per_expert) {
  std::vector<std::vector<double>> bytes(gpus, std::vector<double>(gpus, 0.0));
  for (int g = 0; g < gpus; ++g) {
    for (int t = 0; t < tokens_per_gpu; ++t) {
      std::vector<int> dests = owners[static_cast<size_t>(g) * tokens_per_gpu + t];
      if (!per_expert) {
        std::sort(dests.begin(), dests.end());
        dests.erase(std::unique(dests.begin(), dests.end()), dests.end());
      }
      for (int d : dests) {
        if (d != g) bytes[g][d] += record;
      }
    }
  }
  return bytes;
}

// DeepEP's internode scheme as one pipelined transfer: a token crosses to each remote host once, over
// the NIC to the GPU of the same local rank there, which forwards it over NVLink to each destination
// GPU on its host (forwarding overlaps the arrivals, as DeepEP's chunked kernels do); traffic within
// the host goes over NVLink directly.
std::vector<std::vector<double>> HierarchicalPairBytes(int gpus, int tokens_per_gpu, const std::vector<std::vector<int>>& owners,
                                                       double record) {
  std::vector<std::vector<double>> bytes(gpus, std::vector<double>(gpus, 0.0));
  for (int g = 0; g < gpus; ++g) {
    const int host = g / kGpusPerHost, local = g % kGpusPerHost;
    for (int t = 0; t < tokens_per_gpu; ++t) {
      std::vector<int> dests = owners[static_cast<size_t>(g) * tokens_per_gpu + t];
      std::sort(dests.begin(), dests.end());
      dests.erase(std::unique(dests.begin(), dests.end()), dests.end());
      std::vector<int> hosts;
      for (int d : dests) {
        const int h = d / kGpusPerHost, relay = h * kGpusPerHost + local;
        if (h == host) {
          if (d != g) bytes[g][d] += record;
          continue;
        }
        if (std::find(hosts.begin(), hosts.end(), h) == hosts.end()) {
          hosts.push_back(h);
          bytes[g][relay] += record;
        }
        if (d != relay) bytes[relay][d] += record;
      }
    }
  }
  return bytes;
}

std::vector<std::vector<double>> Transposed(const std::vector<std::vector<double>>& b) {
  std::vector<std::vector<double>> t(b.size(), std::vector<double>(b.size(), 0.0));
  for (size_t i = 0; i < b.size(); ++i) {
    for (size_t j = 0; j < b.size(); ++j) t[j][i] = b[i][j];
  }
  return t;
}

// Runs one all-to-all on a fresh flow network; returns its time in seconds.
double FlowAllToAll(int gpus, const std::vector<std::vector<double>>& gpu_bytes) {
  moe::sim::Simulator sim;
  moe::sim::Network network(&sim);
  moe::sim::Topology topology(&network);
  moe::sim::ClusterShape shape;
  shape.hosts = std::max(1, gpus / kGpusPerHost);
  shape.gpus_per_host = std::min(gpus, kGpusPerHost);
  shape.intra_host_bandwidth = kNvlink;
  shape.intra_host_latency = kNvlinkLatency;
  shape.nic_bandwidth = kRdma;
  shape.nic_latency = kRdmaLatency;
  auto placement = shape.hosts == 1 ? moe::sim::SingleNode(shape, &topology) : moe::sim::RailOptimized(shape, &topology);
  if (!placement.ok()) return -1;
  std::vector<std::vector<double>> bytes;
  std::vector<int> host, local;
  placement->Expand(topology.num_nodes(), gpu_bytes, &bytes, &host, &local);
  Nanos done = -1;
  const absl::Status s = moe::sim::DirectAllToAll(topology, network, bytes, [&] { done = sim.now(); });
  if (!s.ok()) {
    std::cerr << s << "\n";
    return -1;
  }
  sim.Run();
  return static_cast<double>(done) * 1e-9;
}

// Endpoint (fluid) time of a direct all-to-all on rail-optimized hosts: each GPU's NVLink port carries
// its traffic within the host, its NIC the rest; the busiest port decides.
double EndpointAllToAll(int gpus, const std::vector<std::vector<double>>& b) {
  double slowest = 0;
  for (int g = 0; g < gpus; ++g) {
    double nv_tx = 0, nv_rx = 0, nic_tx = 0, nic_rx = 0;
    for (int o = 0; o < gpus; ++o) {
      const bool same = g / kGpusPerHost == o / kGpusPerHost;
      (same ? nv_tx : nic_tx) += b[g][o];
      (same ? nv_rx : nic_rx) += b[o][g];
    }
    const double nv = std::max(nv_tx, nv_rx) / kNvlink + kNvlinkLatency * 1e-9;
    const double nic = nic_tx + nic_rx > 0 ? std::max(nic_tx, nic_rx) / kRdma + kRdmaLatency * 1e-9 : 0;
    slowest = std::max({slowest, nv, nic});
  }
  return slowest;
}

// Bytes per GPU over DeepEP's measured medium: everything a GPU sends at EP8 (NVLink), what crosses
// hosts beyond (RDMA).
double MediumBytesPerGpu(int gpus, const std::vector<std::vector<double>>& b) {
  double total = 0;
  for (int g = 0; g < gpus; ++g) {
    for (int o = 0; o < gpus; ++o) {
      if (gpus <= kGpusPerHost || g / kGpusPerHost != o / kGpusPerHost) total += b[g][o];
    }
  }
  return total / gpus;
}

void DeepEpTable() {
  moe::sim::RandomStream rng(42, 1);
  std::cout << "#### DeepEP normal mode (4096 tokens/GPU, hidden 7168, top-8 of 256, node-limited to 4, FP8 dispatch, BF16 combine)\n\n"
            << "| setup | dispatch predicted | published | error | combine predicted | published | error |\n"
            << "|---|---|---|---|---|---|---|\n";
  struct Normal {
    int ep;
    double dispatch_gbs, combine_gbs;
  };
  for (const Normal& n : {Normal{8, 153, 158}, Normal{16, 43, 43}, Normal{32, 58, 57}, Normal{64, 51, 50}}) {
    const bool internode = n.ep > kGpusPerHost;
    const auto owners = RouteTokens(n.ep, 4096, rng);
    const auto dispatch = internode ? HierarchicalPairBytes(n.ep, 4096, owners, kDispatchBytes) : PairBytes(n.ep, 4096, owners, kDispatchBytes, false);
    const auto combine = Transposed(internode ? HierarchicalPairBytes(n.ep, 4096, owners, kCombineBytes)
                                              : PairBytes(n.ep, 4096, owners, kCombineBytes, false));
    const double td = FlowAllToAll(n.ep, dispatch), tc = FlowAllToAll(n.ep, combine);
    // DeepEP's figure: bytes over the bottleneck medium (NVLink at EP8, RDMA beyond) per GPU / time.
    const double rdma_d = MediumBytesPerGpu(n.ep, dispatch), rdma_c = MediumBytesPerGpu(n.ep, combine);
    const double bd = rdma_d / td / 1e9, bc = rdma_c / tc / 1e9;
    std::cout << absl::StrFormat("| EP%d %s | %.0f GB/s | %.0f GB/s | %+.0f%% | %.0f GB/s | %.0f GB/s | %+.0f%% |\n", n.ep,
                                 internode ? "RDMA" : "NVLink", bd, n.dispatch_gbs, 100 * (bd / n.dispatch_gbs - 1), bc,
                                 n.combine_gbs, 100 * (bc / n.combine_gbs - 1));
  }
  std::cout << "\n#### DeepEP low-latency mode (128 tokens/GPU, top-8, each (token, expert) sent on its own)\n\n"
            << "| setup | dispatch predicted | published | error | combine predicted | published | error |\n"
            << "|---|---|---|---|---|---|---|\n";
  struct LowLatency {
    int ep;
    double dispatch_us, combine_us;
  };
  for (const LowLatency& l : {LowLatency{8, 77, 114}, LowLatency{16, 118, 195}, LowLatency{32, 155, 273}, LowLatency{64, 173, 314},
                              LowLatency{128, 192, 369}, LowLatency{256, 194, 360}}) {
    const auto owners = RouteTokens(l.ep, 128, rng);
    const double td = EndpointAllToAll(l.ep, PairBytes(l.ep, 128, owners, kDispatchBytes, true)) * 1e6;
    const double tc = EndpointAllToAll(l.ep, PairBytes(l.ep, 128, owners, kCombineBytes, true)) * 1e6;
    std::cout << absl::StrFormat("| EP%d | %.0f us | %.0f us | %+.0f%% | %.0f us | %.0f us | %+.0f%% |\n", l.ep, td, l.dispatch_us,
                                 100 * (td / l.dispatch_us - 1), tc, l.combine_us, 100 * (tc / l.combine_us - 1));
  }
  std::cout << "\nLinks: NVLink " << kNvlink / 1e9 << " GB/s (" << kNvlinkLatency << " ns), RDMA " << kRdma / 1e9 << " GB/s ("
            << kRdmaLatency << " ns) per GPU; no kernel or synchronization overhead is modelled.\n\n";
}

int ScaleRun() {
  auto config = moe::ModelConfig::FromFile(absl::GetFlag(FLAGS_scale_model));
  if (!config.ok()) {
    std::cerr << config.status() << "\n";
    return 1;
  }
  const moe::sim::ModelShape shape = moe::sim::ModelShape::FromConfig(*config, "qwen2-57b-a14b", 2, 2);
  moe::sim::WorkloadSpec workload;
  workload.rate = absl::GetFlag(FLAGS_scale_rate);
  workload.duration_s = absl::GetFlag(FLAGS_scale_seconds);
  workload.prompt_min = 128;
  workload.prompt_max = 2048;
  workload.output_min = 32;
  workload.output_max = 512;
  workload.zipf = 0.6;
  moe::sim::ClusterSpec cluster;
  cluster.name = "h100-1024";
  cluster.device = moe::sim::H100Profile();
  cluster.topology = "rail_optimized";
  cluster.shape.hosts = 128;
  cluster.shape.gpus_per_host = 8;
  cluster.shape.intra_host_bandwidth = 450e9;
  cluster.shape.nic_bandwidth = 50e9;
  cluster.workers = 8;
  cluster.replicas = 128;
  cluster.step_overhead = 200'000;
  cluster.collective_overhead = 20'000;
  cluster.batch = {256, 8192};
  cluster.max_queued = 1 << 20;
  cluster.fidelity = moe::sim::Fidelity::kFluid;
  const auto start = std::chrono::steady_clock::now();
  auto requests = moe::sim::GenerateRequests(workload);
  if (!requests.ok()) {
    std::cerr << requests.status() << "\n";
    return 1;
  }
  const auto popularity = moe::sim::ExpertPopularity::Zipf(shape, workload.zipf, workload.seed);
  auto report = moe::sim::SimulateServing(*config, shape, popularity, cluster, workload, *requests);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!report.ok()) {
    std::cerr << report.status() << "\n";
    return 1;
  }
  std::cout << absl::StrFormat("#### Scale: 1,024 H100 (128 EP8 replicas, rail-optimized), %s, %.0f s of traffic at %.0f requests/s\n\n",
                               shape.name, workload.duration_s, workload.rate)
            << moe::sim::ReportSummary(*report)
            << absl::StrFormat("\nwall time %.2f s (target < 60 s), %.2f million events/s, %.0f simulated steps/s\n", wall,
                               static_cast<double>(report->events) / wall / 1e6, static_cast<double>(report->steps) / wall);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  moe::ParseFlags(argc, argv);
  if (absl::GetFlag(FLAGS_deepep)) DeepEpTable();
  if (absl::GetFlag(FLAGS_scale)) return ScaleRun();
  return 0;
}
