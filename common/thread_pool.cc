#include "common/thread_pool.h"

#include <algorithm>

namespace moe {

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::RunChunks() {
  while (true) {
    int64_t begin = next_.fetch_add(grain_, std::memory_order_relaxed);
    if (begin >= n_) return;
    (*fn_)(begin, std::min(n_, begin + grain_));
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  while (true) {
    {
      absl::MutexLock lock(&mutex_);
      struct NewLoopOrStop {
        const ThreadPool* pool;
        uint64_t seen;
        bool Ready() const ABSL_NO_THREAD_SAFETY_ANALYSIS {
          return pool->stopping_ || pool->generation_ != seen;
        }
      } wake{this, seen};
      mutex_.Await(absl::Condition(&wake, &NewLoopOrStop::Ready));
      if (stopping_) return;
      seen = generation_;
    }
    RunChunks();
    absl::MutexLock lock(&mutex_);
    --busy_workers_;
  }
}

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    fn(0, n);
    return;
  }
  absl::MutexLock loop_lock(&loop_mutex_);
  fn_ = &fn;
  n_ = n;
  grain_ = std::max<int64_t>(1, n / (4 * num_threads()));
  next_.store(0, std::memory_order_relaxed);
  {
    absl::MutexLock lock(&mutex_);
    busy_workers_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  RunChunks();
  absl::MutexLock lock(&mutex_);
  mutex_.Await(absl::Condition(
      +[](int* busy) { return *busy == 0; }, &busy_workers_));
  fn_ = nullptr;
}

}  // namespace moe
