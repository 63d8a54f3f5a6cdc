#include "checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

using Json = nlohmann::json;

// Header sizes beyond this are refused outright (the format's own reference limit is 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

absl::Status Invalid(absl::string_view source, absl::string_view tensor, absl::string_view what) {
  if (tensor.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
  return absl::InvalidArgumentError(absl::StrCat(source, ": tensor '", tensor, "': ", what));
}

}  // namespace

int64_t TensorView::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::map<std::string, TensorInfo>> ParseSafetensorsHeader(absl::string_view bytes, uint64_t file_size,
                                                                         absl::string_view source) {
  if (file_size < 8 || bytes.size() < 8) {
    return absl::DataLossError(absl::StrCat(source, ": truncated file (", file_size, " bytes, need at least 8)"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | static_cast<uint8_t>(bytes[i]);
  if (header_len > kMaxHeaderBytes || header_len > file_size - 8) {
    return absl::DataLossError(absl::StrCat(source, ": header length ", header_len,
                                            " runs past the end of the file (", file_size, " bytes)"));
  }
  if (bytes.size() < 8 + header_len) return absl::DataLossError(absl::StrCat(source, ": truncated header"));
  const uint64_t data_size = file_size - 8 - header_len;
  absl::string_view header = bytes.substr(8, header_len);
  Json j = Json::parse(header.begin(), header.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Invalid(source, "", "malformed JSON header");
  if (!j.is_object()) return Invalid(source, "", "JSON header is not an object");

  std::map<std::string, TensorInfo> tensors;
  std::vector<std::pair<uint64_t, const std::string*>> by_offset;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;
    const Json& e = it.value();
    if (!e.is_object()) return Invalid(source, name, "entry is not an object");
    if (!e.contains("dtype") || !e["dtype"].is_string()) return Invalid(source, name, "missing dtype");
    if (!e.contains("shape") || !e["shape"].is_array()) return Invalid(source, name, "missing shape");
    if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2) {
      return Invalid(source, name, "data_offsets must be [begin, end]");
    }
    TensorInfo info;
    info.dtype_name = e["dtype"].get<std::string>();
    uint64_t elements = 1;
    for (const Json& d : e["shape"]) {
      if (!d.is_number_unsigned()) return Invalid(source, name, "shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > (uint64_t{1} << 40) || (dim != 0 && elements > (uint64_t{1} << 62) / dim)) {
        return Invalid(source, name, "shape is too large");
      }
      elements *= dim;
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    for (const Json& o : e["data_offsets"]) {
      if (!o.is_number_unsigned()) return Invalid(source, name, "data_offsets must be non-negative integers");
    }
    info.begin = e["data_offsets"][0].get<uint64_t>();
    info.end = e["data_offsets"][1].get<uint64_t>();
    if (info.begin > info.end) return Invalid(source, name, "data_offsets begin after end");
    if (info.end > data_size) {
      return Invalid(source, name, absl::StrCat("data_offsets end ", info.end, " is out of range (data section is ",
                                                data_size, " bytes; file truncated?)"));
    }
    if (auto dtype = DTypeFromName(info.dtype_name)) {
      if (elements * DTypeSize(*dtype) != info.end - info.begin) {
        return Invalid(source, name, absl::StrCat("byte size ", info.end - info.begin, " does not match shape x ",
                                                  info.dtype_name, " (", elements * DTypeSize(*dtype), ")"));
      }
    }
    auto [pos, inserted] = tensors.emplace(name, std::move(info));
    if (!inserted) return Invalid(source, name, "listed twice");
    by_offset.emplace_back(pos->second.begin, &pos->first);
  }
  std::sort(by_offset.begin(), by_offset.end());
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& prev = tensors.at(*by_offset[i - 1].second);
    const TensorInfo& cur = tensors.at(*by_offset[i].second);
    if (cur.begin < prev.end && cur.end > cur.begin) {
      return Invalid(source, *by_offset[i].second, absl::StrCat("data overlaps tensor '", *by_offset[i - 1].second, "'"));
    }
  }
  return tensors;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": fstat failed"));
  }
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ > 0) {
    void* m = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      ::close(fd);
      return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(errno)));
    }
    f->map_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);
  absl::string_view bytes(reinterpret_cast<const char*>(f->map_), f->size_);
  auto tensors = ParseSafetensorsHeader(bytes, f->size_, path);
  if (!tensors.ok()) return tensors.status();
  f->tensors_ = std::move(*tensors);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | f->map_[i];
  f->data_start_ = 8 + header_len;
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(const_cast<uint8_t*>(map_), size_);
}

absl::StatusOr<TensorView> SafetensorsFile::Get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return absl::NotFoundError(absl::StrCat(path_, ": missing tensor '", name, "'"));
  const TensorInfo& info = it->second;
  auto dtype = DTypeFromName(info.dtype_name);
  if (!dtype) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor '", name, "': unsupported dtype ",
                                                   info.dtype_name, " (supported: F32, BF16, F16)"));
  }
  return TensorView{map_ + data_start_ + info.begin, *dtype, info.shape};
}

}  // namespace moe
