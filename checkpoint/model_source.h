// A Hugging Face checkpoint directory: config.json, model.safetensors or sharded files listed by
// model.safetensors.index.json, and optionally tokenizer.model.
#ifndef MOE_CHECKPOINT_MODEL_SOURCE_H_
#define MOE_CHECKPOINT_MODEL_SOURCE_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "checkpoint/model_config.h"
#include "checkpoint/safetensors.h"

namespace moe {

class ModelSource {
 public:
  // Reads and validates config.json and the index (if sharded). Shard files are opened and validated
  // lazily, on the first read of one of their tensors, so a reader touches only what it asks for.
  static absl::StatusOr<std::unique_ptr<ModelSource>> Open(const std::string& dir);

  const ModelConfig& config() const { return config_; }
  const std::string& dir() const { return dir_; }
  // Path of tokenizer.model, or empty when the directory has none.
  const std::string& tokenizer_path() const { return tokenizer_path_; }

  // The named tensor, checked against `expected_shape`. Errors name the file and the tensor:
  // NOT_FOUND (missing tensor or shard file), INVALID_ARGUMENT (wrong shape or unsupported dtype),
  // DATA_LOSS (a corrupt or truncated shard). Thread-safe. Views stay valid while this object lives.
  absl::StatusOr<TensorView> Tensor(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  bool HasTensor(const std::string& name) const;

  // How many shard files have been opened and tensors read so far (tests check partial loading).
  int files_opened() const;
  int tensors_read() const;

 private:
  ModelSource() = default;
  absl::StatusOr<const SafetensorsFile*> FileFor(const std::string& tensor) const;

  std::string dir_;
  ModelConfig config_;
  std::string tokenizer_path_;
  std::map<std::string, std::string> tensor_to_file_;  // empty when single-file
  std::string single_file_;
  mutable absl::Mutex mutex_;
  mutable std::map<std::string, std::unique_ptr<SafetensorsFile>> open_files_ ABSL_GUARDED_BY(mutex_);
  mutable int tensors_read_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace moe

#endif  // MOE_CHECKPOINT_MODEL_SOURCE_H_
