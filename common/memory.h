// Process-wide allocator policy for processes that move large buffers every step (workers, exchange
// benchmarks).
#ifndef MOE_COMMON_MEMORY_H_
#define MOE_COMMON_MEMORY_H_

#include <malloc.h>

namespace moe {

// By default glibc serves each allocation of >= 128 KB (a threshold that only grows as such blocks are
// freed) with a fresh mmap and returns it with munmap: every all-to-all then pays page faults, and MPI's
// shared-memory transport re-maps the pages, for buffers that the next step allocates again at the same
// size. Serving blocks of up to 256 MB from the heap, and not trimming the heap below 512 MB, lets them
// be reused. One arena for all threads: a per-thread arena's heap is unmapped as soon as it is empty,
// whatever the trim threshold, so the buffers gRPC's threads receive into (tens of MB a collective)
// would come back as fresh pages every time; on this project's VMs a page fault costs ~14 us, i.e.
// ~3.5 ms per MB (bench: moe-bench-exchange). Call once, first thing in main().
inline void KeepLargeBuffersInTheHeap() {
  mallopt(M_ARENA_MAX, 1);
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
}

}  // namespace moe

#endif  // MOE_COMMON_MEMORY_H_
