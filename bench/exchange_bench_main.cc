// moe-bench-exchange: All2All latency and bandwidth of each Exchange backend among the ranks of an MPI
// job (gRPC twice: as deployed, where same-host peers read blocks by address, and TCP-only, as between
// hosts), side by side with plain MPI_Alltoallv on the same payloads, memcpy and loopback TCP bandwidth.
//   mpirun --allow-run-as-root -np 4 build/bin/moe-bench-exchange [--hidden 4096] [--iters 20]
// With --calibration-bytes B it measures only what moe-calibrate needs of the MPI backend, and rank 0
// prints one line: "mpi_alltoall_seconds SMALL LARGE", the median all-to-all with B and with 1 MiB to
// every peer.
// Each rank sends tokens/size tokens of `hidden` values to every rank (tokens = 1..4096, F32 and BF16).
// GB/s counts the bytes one rank sends to the other ranks per collective, over the median time. The three
// variants take turns within each iteration (noise on this shared machine hits them alike).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <iostream>

#include "absl/strings/str_format.h"
#include "bench/machine_limits.h"
#include "common/memory.h"
#include "exchange/grpc_exchange.h"
#include "exchange/mpi_exchange.h"
#include "proto/grpc_util.h"

namespace {

using Clock = std::chrono::steady_clock;

// Median seconds of each collective (the slowest rank's time), the variants taking turns within every
// iteration so that a noisy stretch of this shared machine hits them all alike.
std::vector<double> InterleavedMedianSeconds(int iters, const std::vector<std::function<void()>>& collectives) {
  std::vector<std::vector<double>> t(collectives.size());
  for (const auto& c : collectives) c();  // warm-up
  for (int i = 0; i < iters; ++i) {
    for (size_t v = 0; v < collectives.size(); ++v) {
      MPI_Barrier(MPI_COMM_WORLD);
      const auto t0 = Clock::now();
      collectives[v]();
      double local = std::chrono::duration<double>(Clock::now() - t0).count(), slowest = 0;
      MPI_Allreduce(&local, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      t[v].push_back(slowest);
    }
  }
  std::vector<double> medians;
  for (auto& v : t) {
    std::sort(v.begin(), v.end());
    medians.push_back(v[v.size() / 2]);
  }
  return medians;
}

}  // namespace

int main(int argc, char** argv) {
  moe::KeepLargeBuffersInTheHeap();
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int64_t hidden = 4096, calibration_bytes = 0;
  int iters = 20;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--hidden") == 0) hidden = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--calibration-bytes") == 0) calibration_bytes = std::atoll(argv[i + 1]);
  }
  if (calibration_bytes > 0) {
    moe::MpiExchange mpi(MPI_COMM_WORLD);
    uint64_t tag = 1;
    std::vector<double> seconds;
    for (const size_t bytes : {static_cast<size_t>(calibration_bytes), size_t{1} << 20}) {
      moe::ExchangeBuffer payload, received;
      payload.Layout(std::vector<size_t>(static_cast<size_t>(size), bytes));
      std::memset(payload.block(0), rank, payload.total_bytes());
      seconds.push_back(InterleavedMedianSeconds(iters, {[&] {
                          if (!mpi.AllToAllV(tag++, payload, &received).ok()) MPI_Abort(MPI_COMM_WORLD, 1);
                        }})[0]);
    }
    if (rank == 0) std::cout << absl::StrFormat("mpi_alltoall_seconds %.9f %.9f\n", seconds[0], seconds[1]);
    MPI_Finalize();
    return 0;
  }

  // gRPC backend, twice: as deployed (same-host peers read blocks by address) and with every block
  // over TCP (as between hosts). Every rank serves Worker.Exchange on loopback ports swapped over MPI.
  struct GrpcMember {
    moe::ExchangeOnlyService service;
    std::unique_ptr<grpc::Server> server;
    std::unique_ptr<moe::GrpcExchange> exchange;
  };
  auto start_member = [&](bool same_host_reads) {
    auto m = std::make_unique<GrpcMember>();
    std::string address;
    auto server = moe::StartLoopbackServer(&m->service, &address);
    if (!server.ok()) MPI_Abort(MPI_COMM_WORLD, 1);
    m->server = std::move(*server);
    const int port = std::stoi(address.substr(address.rfind(':') + 1));
    std::vector<int> ports(static_cast<size_t>(size));
    MPI_Allgather(&port, 1, MPI_INT, ports.data(), 1, MPI_INT, MPI_COMM_WORLD);
    std::vector<std::string> addresses;
    for (int p : ports) addresses.push_back("127.0.0.1:" + std::to_string(p));
    m->exchange = std::make_unique<moe::GrpcExchange>(rank, 1, addresses, std::chrono::seconds(60), same_host_reads);
    m->service.set_target(m->exchange.get());
    return m;
  };
  auto grpc_member = start_member(true);
  auto tcp_member = start_member(false);
  moe::MpiExchange mpi_exchange(MPI_COMM_WORLD);
  MPI_Barrier(MPI_COMM_WORLD);

  const double memcpy_gbs = rank == 0 ? moe::bench::MeasureMemcpyBandwidthGBs() : 0;
  const double tcp_gbs = rank == 0 ? moe::bench::MeasureLoopbackTcpGBs() : 0;
  if (rank == 0) {
    std::cout << absl::StrFormat("%d ranks, hidden %d, median of %d collectives; measured now: memcpy %.1f GB/s "
                                 "(1 thread), one loopback TCP stream %.2f GB/s\n",
                                 size, hidden, iters, memcpy_gbs, tcp_gbs)
              << "| dtype | tokens/rank | bytes/peer | MPI_Alltoallv us | MPI backend us | gRPC backend us | "
                 "gRPC TCP-only us | MPI_Alltoallv GB/s | MPI backend GB/s | gRPC backend GB/s | gRPC TCP-only GB/s | "
                 "MPI backend / plain | gRPC / plain | gRPC TCP-only / plain |\n"
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  }
  uint64_t tag = 1;
  for (int dtype_bytes : {4, 2}) {
    for (int64_t tokens : {1, 16, 64, 256, 1024, 4096}) {
      const int64_t per_peer_tokens = std::max<int64_t>(1, tokens / size);
      const size_t bytes = static_cast<size_t>(per_peer_tokens * hidden * dtype_bytes);
      // The backends' hot-path API: contiguous caller-owned buffers, reused across collectives.
      moe::ExchangeBuffer payload, received;
      payload.Layout(std::vector<size_t>(static_cast<size_t>(size), bytes));
      std::memset(payload.block(0), rank, payload.total_bytes());
      // Plain MPI_Alltoallv on one contiguous buffer.
      std::string send_buf(bytes * size, 'x'), recv_buf(bytes * size, '\0');
      std::vector<int> counts(static_cast<size_t>(size), static_cast<int>(bytes)), displs(static_cast<size_t>(size));
      for (int i = 0; i < size; ++i) displs[i] = static_cast<int>(bytes) * i;
      const std::vector<double> medians = InterleavedMedianSeconds(
          iters, {[&] {
                    MPI_Alltoallv(send_buf.data(), counts.data(), displs.data(), MPI_BYTE, recv_buf.data(),
                                  counts.data(), displs.data(), MPI_BYTE, MPI_COMM_WORLD);
                  },
                  [&] {
                    if (!mpi_exchange.AllToAllV(tag++, payload, &received).ok()) MPI_Abort(MPI_COMM_WORLD, 1);
                  },
                  [&] {
                    if (!grpc_member->exchange->AllToAllV(tag++, payload, &received).ok()) MPI_Abort(MPI_COMM_WORLD, 1);
                  },
                  [&] {
                    if (!tcp_member->exchange->AllToAllV(tag++, payload, &received).ok()) MPI_Abort(MPI_COMM_WORLD, 1);
                  }});
      const double plain = medians[0], mpi = medians[1], grpc_s = medians[2], tcp_s = medians[3];
      const double sent = static_cast<double>(bytes) * (size - 1);
      if (rank == 0) {
        std::cout << absl::StrFormat(
            "| %s | %d | %d | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n",
            dtype_bytes == 4 ? "F32" : "BF16", tokens, bytes, plain * 1e6, mpi * 1e6, grpc_s * 1e6, tcp_s * 1e6,
            sent / plain / 1e9, sent / mpi / 1e9, sent / grpc_s / 1e9, sent / tcp_s / 1e9, plain / mpi, plain / grpc_s,
            plain / tcp_s);
      }
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  for (GrpcMember* m : {grpc_member.get(), tcp_member.get()}) {
    m->exchange->Abort(absl::UnavailableError("benchmark done"));
    m->server->Shutdown(moe::DeadlineAfter(std::chrono::seconds(2)));
  }
  MPI_Finalize();
  return 0;
}
