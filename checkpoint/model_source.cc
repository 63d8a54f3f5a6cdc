#include "checkpoint/model_source.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

}  // namespace

absl::StatusOr<std::unique_ptr<ModelSource>> ModelSource::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  std::unique_ptr<ModelSource> s(new ModelSource());
  s->dir_ = dir;
  if (!fs::is_directory(dir)) return absl::NotFoundError(absl::StrCat(dir, ": not a checkpoint directory"));
  MOE_ASSIGN_OR_RETURN(s->config_, ModelConfig::FromFile((fs::path(dir) / "config.json").string()));
  const fs::path tok = fs::path(dir) / "tokenizer.model";
  if (fs::exists(tok)) s->tokenizer_path_ = tok.string();

  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    std::ifstream in(index);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index.string(), ": needs a 'weight_map' object"));
    }
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index.string(), ": tensor '", it.key(), "' maps to a non-string"));
      }
      const std::string file = it.value().get<std::string>();
      if (file.empty() || file.find('/') != std::string::npos || file == "..") {
        return absl::InvalidArgumentError(absl::StrCat(index.string(), ": tensor '", it.key(), "' maps to bad file name '", file, "'"));
      }
      s->tensor_to_file_[it.key()] = (fs::path(dir) / file).string();
    }
  } else if (fs::exists(single)) {
    s->single_file_ = single.string();
  } else {
    return absl::NotFoundError(absl::StrCat(dir, ": has neither model.safetensors nor model.safetensors.index.json"));
  }
  return s;
}

absl::StatusOr<const SafetensorsFile*> ModelSource::FileFor(const std::string& tensor) const {
  std::string path = single_file_;
  if (path.empty()) {
    auto it = tensor_to_file_.find(tensor);
    if (it == tensor_to_file_.end()) {
      return absl::NotFoundError(absl::StrCat(dir_, "/model.safetensors.index.json: missing tensor '", tensor, "'"));
    }
    path = it->second;
  }
  absl::MutexLock lock(&mutex_);
  auto& slot = open_files_[path];
  if (slot == nullptr) {
    auto opened = SafetensorsFile::Open(path);
    if (!opened.ok()) {
      open_files_.erase(path);
      return opened.status();
    }
    slot = std::move(*opened);
  }
  return slot.get();
}

bool ModelSource::HasTensor(const std::string& name) const {
  if (single_file_.empty()) return tensor_to_file_.count(name) > 0;
  auto file = FileFor(name);
  return file.ok() && (*file)->Contains(name);
}

absl::StatusOr<TensorView> ModelSource::Tensor(const std::string& name, const std::vector<int64_t>& expected_shape) const {
  MOE_ASSIGN_OR_RETURN(const SafetensorsFile* file, FileFor(name));
  MOE_ASSIGN_OR_RETURN(TensorView view, file->Get(name));
  {
    absl::MutexLock lock(&mutex_);
    ++tensors_read_;
  }
  if (view.shape != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat(file->path(), ": tensor '", name, "' has shape ",
                                                   ShapeString(view.shape), ", expected ", ShapeString(expected_shape)));
  }
  return view;
}

int ModelSource::files_opened() const {
  absl::MutexLock lock(&mutex_);
  return static_cast<int>(open_files_.size());
}

int ModelSource::tensors_read() const {
  absl::MutexLock lock(&mutex_);
  return tensors_read_;
}

}  // namespace moe
