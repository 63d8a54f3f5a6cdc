// Contiguous, caller-owned bytes for one side of an all-to-all-v: the hot-path buffer type of the
// Exchange seam. Member i's block is bytes [offset(i), offset(i + 1)).
#ifndef MOE_EXCHANGE_EXCHANGE_BUFFER_H_
#define MOE_EXCHANGE_EXCHANGE_BUFFER_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/types/span.h"

namespace moe {

// Storage is kept across collectives, so a steady-state collective allocates nothing and touches no
// fresh pages. Transports that send without copying (gRPC slices) hold a reference to the storage
// while the bytes are in flight; Layout() then moves to fresh storage instead of overwriting bytes a
// transport may still read. Not thread-safe: one owner at a time.
class ExchangeBuffer {
 public:
  ExchangeBuffer() = default;
  ExchangeBuffer(const ExchangeBuffer&) = delete;
  ExchangeBuffer& operator=(const ExchangeBuffer&) = delete;
  ExchangeBuffer(ExchangeBuffer&&) = default;
  ExchangeBuffer& operator=(ExchangeBuffer&&) = default;

  // Lays out one block per entry of `sizes`, back to back. The contents are unspecified until written.
  void Layout(absl::Span<const size_t> sizes) {
    offsets_.assign(1, 0);
    for (size_t s : sizes) offsets_.push_back(offsets_.back() + s);
    const size_t need = offsets_.back();
    if (storage_ == nullptr || need > capacity_ || storage_.use_count() > 1) {
      capacity_ = need > capacity_ ? need + need / 4 : capacity_;
      storage_.reset(new char[capacity_ == 0 ? 1 : capacity_]);  // uninitialized on purpose
    }
  }

  int members() const { return static_cast<int>(offsets_.size()) - 1; }
  size_t offset(int member) const { return offsets_[static_cast<size_t>(member)]; }
  size_t block_size(int member) const { return offset(member + 1) - offset(member); }
  size_t total_bytes() const { return offsets_.back(); }
  char* block(int member) { return storage_.get() + offset(member); }
  const char* block(int member) const { return storage_.get() + offset(member); }
  absl::Span<const char> view(int member) const { return {block(member), block_size(member)}; }

  // For transports that send from the storage without copying: keeps it alive (and out of reuse by
  // Layout) for as long as the returned reference lives.
  std::shared_ptr<char[]> ShareStorage() const { return storage_; }

 private:
  std::shared_ptr<char[]> storage_;
  size_t capacity_ = 0;
  std::vector<size_t> offsets_{0};
};

}  // namespace moe

#endif  // MOE_EXCHANGE_EXCHANGE_BUFFER_H_
