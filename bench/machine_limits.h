// This machine's own limits, measured in the same run as a benchmark so ratios are honest.
#ifndef MOE_BENCH_MACHINE_LIMITS_H_
#define MOE_BENCH_MACHINE_LIMITS_H_

#include "common/cpu_features.h"
#include "common/thread_pool.h"

namespace moe::bench {

// Peak F32 FMA throughput (GFLOP/s, 2 flops per lane per FMA) on every thread of `pool` at once,
// with independent accumulator chains in registers of `level`'s width. Median of `repeats` runs.
double MeasureFmaPeakGflops(ThreadPool& pool, SimdLevel level, int repeats = 5);

// Streaming read bandwidth (GB/s) over a buffer much larger than the caches, all threads; median.
double MeasureReadBandwidthGBs(ThreadPool& pool, int repeats = 5);

// memcpy bandwidth (GB/s, bytes copied per second), single thread; median.
double MeasureMemcpyBandwidthGBs(int repeats = 5);

// One TCP stream over loopback (GB/s): a thread writes 64 MB in 1 MB writes into a socket read by the
// caller into a reused buffer; median. The ceiling of any TCP data plane (gRPC) on this machine.
// Returns 0 if loopback sockets cannot be set up.
double MeasureLoopbackTcpGBs(int repeats = 5);

}  // namespace moe::bench

#endif  // MOE_BENCH_MACHINE_LIMITS_H_
