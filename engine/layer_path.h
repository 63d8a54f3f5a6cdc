// Dr.LLM layer paths: how many times a sequence runs each decoder layer. Decided once, at the
// sequence's first forward step, and kept for the rest of it (prefill and decode).
#ifndef MOE_ENGINE_LAYER_PATH_H_
#define MOE_ENGINE_LAYER_PATH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace moe {

// A layer's run count in a path: skip it (no attention, no experts, no All2All for that sequence), run it
// once, or run it twice in a row (the second run with KV entries of its own).
inline constexpr uint8_t kSkipLayer = 0;
inline constexpr uint8_t kRunLayer = 1;
inline constexpr uint8_t kRepeatLayer = 2;
inline constexpr int kMaxLayerPasses = 2;

// [num_layers] run counts; empty means every layer once (the model as trained).
using LayerPath = std::vector<uint8_t>;

// INVALID_ARGUMENT unless path is empty or has num_layers entries, each 0..2.
absl::Status ValidateLayerPath(const LayerPath& path, int64_t num_layers);

// Layers a token of a sequence on this path executes (a repeated layer counts twice).
int64_t LayersExecuted(const LayerPath& path, int64_t num_layers);

// "1 1 0 2": one digit per layer; empty path -> every layer "1".
std::string LayerPathString(const LayerPath& path, int64_t num_layers);

// Chooses a sequence's run count for each layer from the hidden states entering that layer for its
// prompt (hidden [rows, hidden_size], the rows of its first forward step). The model calls Decide once
// per layer, in layer order, so the states already reflect the choices for earlier layers.
class LayerPathPolicy {
 public:
  virtual ~LayerPathPolicy() = default;
  // Returns kSkipLayer, kRunLayer or kRepeatLayer; anything else fails the forward step.
  virtual int Decide(int64_t layer, const float* hidden, int64_t rows) const = 0;
};

}  // namespace moe

#endif  // MOE_ENGINE_LAYER_PATH_H_
