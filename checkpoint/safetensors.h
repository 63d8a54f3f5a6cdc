// Memory-mapped safetensors files: an 8-byte little-endian header length, a JSON header naming every
// tensor's dtype, shape and [begin, end) byte range in the data section, then the data.
#ifndef MOE_CHECKPOINT_SAFETENSORS_H_
#define MOE_CHECKPOINT_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"

namespace moe {

struct TensorInfo {
  std::string dtype_name;  // as written ("F32", "BF16", "I64", ...); resolved when the tensor is read
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets within the data section
  uint64_t end = 0;
};

// A tensor's bytes inside a mapped file; valid while the file that produced it lives.
struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  int64_t num_elements() const;
};

// Validates a header against a file of `file_size` bytes. `bytes` is the whole file prefix holding at
// least the 8-byte length and the header. Errors (INVALID_ARGUMENT / DATA_LOSS, naming `source` and the
// tensor) cover: header length past the end, malformed JSON, bad entries, offsets out of range,
// overlapping tensors, and sizes that disagree with shape x dtype.
absl::StatusOr<std::map<std::string, TensorInfo>> ParseSafetensorsHeader(absl::string_view bytes, uint64_t file_size,
                                                                         absl::string_view source);

class SafetensorsFile {
 public:
  // Maps `path` read-only and validates its header. Pages of tensor data are read only when touched.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  bool Contains(const std::string& name) const { return tensors_.count(name) > 0; }

  // The named tensor. NOT_FOUND if absent; INVALID_ARGUMENT if its dtype is not F32/BF16/F16.
  absl::StatusOr<TensorView> Get(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  const uint8_t* map_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
};

}  // namespace moe

#endif  // MOE_CHECKPOINT_SAFETENSORS_H_
