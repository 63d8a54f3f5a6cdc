#include "exchange/exchange.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace moe {

absl::Status CheckBlockCount(const ExchangeBuffer& send, int members) {
  if (send.members() == members) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("AllToAll: one buffer per member (", send.members(), " given, ", members, " members)"));
}

void CopyIntoBlocks(const std::vector<std::string>& blocks, ExchangeBuffer* out) {
  std::vector<size_t> sizes;
  for (const std::string& b : blocks) sizes.push_back(b.size());
  out->Layout(sizes);
  for (size_t i = 0; i < blocks.size(); ++i) std::memcpy(out->block(static_cast<int>(i)), blocks[i].data(), blocks[i].size());
}

absl::StatusOr<std::vector<std::string>> Exchange::AllToAll(uint64_t tag, const std::vector<std::string>& send) {
  ExchangeBuffer out, in;
  CopyIntoBlocks(send, &out);
  MOE_RETURN_IF_ERROR(AllToAllV(tag, out, &in));
  std::vector<std::string> recv;
  for (int i = 0; i < in.members(); ++i) recv.emplace_back(in.block(i), in.block_size(i));
  return recv;
}

absl::Status Exchange::Barrier(uint64_t tag) {
  ExchangeBuffer empty, in;
  empty.Layout(std::vector<size_t>(static_cast<size_t>(size()), 0));
  return AllToAllV(tag, empty, &in);
}

}  // namespace moe
