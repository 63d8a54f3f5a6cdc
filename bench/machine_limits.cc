#include "bench/machine_limits.h"

#include <arpa/inet.h>
#include <immintrin.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "kernels/kernels.h"

namespace moe::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

constexpr int64_t kFmaIterations = 20'000'000;

// 12 independent accumulators hide the FMA latency on every current x86 core.
__attribute__((target("avx512f"))) float FmaLoopAvx512(int64_t iters) {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], m, c);
  }
  __m512 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, a[i]);
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) float FmaLoopAvx2(int64_t iters) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(static_cast<float>(i));
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
  }
  float out[8];
  __m256 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
  _mm256_storeu_ps(out, s);
  return out[0];
}

float FmaLoopPortable(int64_t iters) {
  float a[12][4];
  for (int i = 0; i < 12; ++i) for (int j = 0; j < 4; ++j) a[i][j] = static_cast<float>(i + j);
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < 12; ++i) for (int j = 0; j < 4; ++j) a[i][j] = a[i][j] * 0.999999f + 1e-7f;
  }
  return a[0][0] + a[11][3];
}

}  // namespace

double MeasureFmaPeakGflops(ThreadPool& pool, SimdLevel level, int repeats) {
  const int lanes = level == SimdLevel::kAvx512 ? 16 : level == SimdLevel::kAvx2 ? 8 : 4;
  const int64_t iters = level == SimdLevel::kPortable ? kFmaIterations / 4 : kFmaIterations;
  std::vector<double> runs;
  std::atomic<float> sink{0};
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    pool.ParallelFor(pool.num_threads(), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        float v = level == SimdLevel::kAvx512 ? FmaLoopAvx512(iters)
                  : level == SimdLevel::kAvx2 ? FmaLoopAvx2(iters) : FmaLoopPortable(iters);
        sink.store(v, std::memory_order_relaxed);
      }
    });
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    runs.push_back(2.0 * 12 * lanes * static_cast<double>(iters) * pool.num_threads() / s / 1e9);
  }
  return Median(runs);
}

double MeasureReadBandwidthGBs(ThreadPool& pool, int repeats) {
  std::vector<float> buf(size_t{64} << 20, 1.0f);  // 256 MiB, far beyond the caches
  std::vector<double> runs;
  std::atomic<float> sink{0};
  const int64_t chunks = 64;
  const size_t per_chunk = buf.size() / chunks;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    pool.ParallelFor(chunks, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const float* p = buf.data() + c * per_chunk;
        sink.store(Dot(p, p, static_cast<int64_t>(per_chunk)), std::memory_order_relaxed);  // SIMD streaming read
      }
    });
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    runs.push_back(static_cast<double>(per_chunk * chunks * sizeof(float)) / s / 1e9);
  }
  return Median(runs);
}

double MeasureMemcpyBandwidthGBs(int repeats) {
  const size_t bytes = size_t{256} << 20;
  std::vector<char> a(bytes, 1), b(bytes, 2);
  std::vector<double> runs;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    runs.push_back(static_cast<double>(bytes) / s / 1e9);
  }
  return Median(runs) + 0 * b[bytes / 2];
}

double MeasureLoopbackTcpGBs(int repeats) {
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  if (listener < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(listener, 1) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(listener);
    return 0;
  }
  const int sender = socket(AF_INET, SOCK_STREAM, 0);
  if (sender < 0 || connect(sender, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(listener);
    if (sender >= 0) close(sender);
    return 0;
  }
  const int receiver = accept(listener, nullptr, nullptr);
  close(listener);
  if (receiver < 0) {
    close(sender);
    return 0;
  }
  constexpr size_t kChunk = size_t{1} << 20, kTotal = size_t{64} << 20;
  std::vector<double> runs;
  std::vector<char> out(kChunk, 1), in(kChunk);
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    std::thread writer([&] {
      for (size_t sent = 0; sent < kTotal;) {
        const ssize_t n = write(sender, out.data(), std::min(kChunk, kTotal - sent));
        if (n <= 0) return;
        sent += static_cast<size_t>(n);
      }
    });
    size_t got = 0;
    while (got < kTotal) {
      const ssize_t n = read(receiver, in.data(), kChunk);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    writer.join();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (got == kTotal) runs.push_back(static_cast<double>(kTotal) / s / 1e9);
  }
  close(sender);
  close(receiver);
  return runs.empty() ? 0 : Median(runs);
}

}  // namespace moe::bench
