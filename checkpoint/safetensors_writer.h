// Writes safetensors files, streaming one tensor at a time (checkpoints larger than memory are fine).
#ifndef MOE_CHECKPOINT_SAFETENSORS_WRITER_H_
#define MOE_CHECKPOINT_SAFETENSORS_WRITER_H_

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"

namespace moe {

struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  int64_t num_elements() const;
};

// Writes `specs` in order to `path`. fill(i, values) must resize `values` to specs[i].num_elements()
// floats and set them; they are stored converted to specs[i].dtype (round to nearest even).
// `metadata` becomes the header's "__metadata__" (string -> string). Returns an error on I/O failure.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorSpec>& specs,
                              const std::function<void(size_t, std::vector<float>*)>& fill,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace moe

#endif  // MOE_CHECKPOINT_SAFETENSORS_WRITER_H_
