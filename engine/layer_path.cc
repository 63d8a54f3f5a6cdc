#include "engine/layer_path.h"

#include "absl/strings/str_cat.h"

namespace moe {

absl::Status ValidateLayerPath(const LayerPath& path, int64_t num_layers) {
  if (path.empty()) return absl::OkStatus();
  if (static_cast<int64_t>(path.size()) != num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer path has ", path.size(), " entries; the model has ", num_layers, " layers"));
  }
  for (size_t l = 0; l < path.size(); ++l) {
    if (path[l] > kRepeatLayer) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer path entry ", l, " is ", static_cast<int>(path[l]), "; expected 0 (skip), 1 or 2 (repeat)"));
    }
  }
  return absl::OkStatus();
}

int64_t LayersExecuted(const LayerPath& path, int64_t num_layers) {
  if (path.empty()) return num_layers;
  int64_t n = 0;
  for (uint8_t runs : path) n += runs;
  return n;
}

std::string LayerPathString(const LayerPath& path, int64_t num_layers) {
  std::string s;
  for (int64_t l = 0; l < num_layers; ++l) {
    if (l > 0) s += ' ';
    s += static_cast<char>('0' + (path.empty() ? kRunLayer : path[l]));
  }
  return s;
}

}  // namespace moe
