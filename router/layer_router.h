// Dr.LLM layer routers: one small MLP per decoder layer that decides, from the prompt, whether a
// request skips the layer, runs it, or runs it twice. Inference, training (focal loss with class
// weights, Adam) and the on-disk format.
//
// A router sees the hidden states entering its layer for the prompt, split into up to kWindows
// contiguous windows; each window's mean is RMS-normalized (no learned scale: hidden-state norms grow
// with depth, and the router should see directions) and passed through Linear(d -> 128), GELU (erf),
// Linear(128 -> 3); the 3 logits are averaged over the windows.
//
// On disk a router set is a directory:
//   manifest.json       {"format": "moe-layer-router/1", "name", "tasks": [...], "examples",
//                        "skip_threshold", "model": {...ModelIdentity}, "layers": [{"layer", "labels":
//                        [skip, run, repeat counts], "class_weights": [3], "train_accuracy"}]}
//   routers.safetensors layers.<l>.fc1.weight [128, d], .fc1.bias [128], .fc2.weight [3, 128], .fc2.bias [3]
#ifndef MOE_ROUTER_LAYER_ROUTER_H_
#define MOE_ROUTER_LAYER_ROUTER_H_

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/layer_path.h"
#include "router/model_identity.h"

namespace moe {

inline constexpr char kLayerRouterFormat[] = "moe-layer-router/1";

inline constexpr int64_t kRouterWindows = 8;
inline constexpr int64_t kRouterBottleneck = 128;
inline constexpr int64_t kRouterClasses = 3;  // kSkipLayer, kRunLayer, kRepeatLayer

using ClassScores = std::array<float, kRouterClasses>;

// One layer's MLP, row-major [out, in] weights.
struct RouterMlp {
  std::vector<float> fc1_weight, fc1_bias, fc2_weight, fc2_bias;
};

// Up to kRouterWindows RMS-normalized window means of hidden [rows, d]: [windows, d]. Rows are split
// into contiguous windows as evenly as possible (fewer windows when rows < kRouterWindows).
std::vector<float> PooledWindows(const float* hidden, int64_t rows, int64_t d);

// Logits of one MLP over pooled windows [windows, d], averaged over the windows.
ClassScores RouterLogits(const RouterMlp& mlp, std::span<const float> windows, int64_t d);

// Softmax of 3 logits.
ClassScores Softmax3(const ClassScores& logits);

// The run count from a router's probabilities: skip when p(skip) >= skip_threshold, otherwise repeat
// when p(repeat) > p(run), otherwise run. A threshold of 1 never skips (unless p(skip) is exactly 1);
// lower thresholds skip more.
int DecideRuns(const ClassScores& probabilities, double skip_threshold);

// Per-layer statistics of the labels a router set was trained on.
struct LayerRouterLayerInfo {
  std::array<int64_t, kRouterClasses> labels{};
  ClassScores class_weights{};
  double train_accuracy = 0;
};

struct LayerRouter {
  std::string name;                // what requests name in GenerateRequest.layer_router
  std::vector<std::string> tasks;  // whose training data labelled it
  int64_t examples = 0;            // labelled prompts it was trained on
  double skip_threshold = 0.5;     // default knob for DecideRuns; a request may override it
  ModelIdentity model;
  std::vector<RouterMlp> layers;   // [num_layers]
  std::vector<LayerRouterLayerInfo> info;  // [num_layers]

  // Class probabilities for `layer` given the hidden states entering it for a prompt.
  ClassScores Probabilities(int64_t layer, const float* hidden, int64_t rows) const;
};

// A router set with small random weights (fc1: std 1/sqrt(d), fc2: std 1/sqrt(128), biases 0).
LayerRouter NewLayerRouter(std::string name, const ModelIdentity& model, uint64_t seed);

// Decides a request's layer path with a router set and a skip threshold. Both must outlive it.
class LayerRoutingPolicy : public LayerPathPolicy {
 public:
  LayerRoutingPolicy(const LayerRouter* router, double skip_threshold)
      : router_(router), skip_threshold_(skip_threshold) {}
  int Decide(int64_t layer, const float* hidden, int64_t rows) const override;

 private:
  const LayerRouter* router_;
  double skip_threshold_;
};

// Focal loss -alpha * (1 - p_y)^gamma * log p_y of softmax(logits) for label y, and its gradient with
// respect to the logits (written to grad when non-null).
float FocalLoss(const ClassScores& logits, int label, float alpha, float gamma, ClassScores* grad);

// One training example: a prompt's pooled windows entering `layer` and the run count to learn.
struct RouterExample {
  int64_t layer = 0;
  std::vector<float> windows;  // [n, d] from PooledWindows
  int label = kRunLayer;
};

struct RouterTrainOptions {
  int64_t epochs = 60;
  int64_t batch_size = 16;
  float learning_rate = 2e-3f;
  float gamma = 2.0f;  // focal loss
  uint64_t seed = 1;
};

// Trains each layer's MLP on its examples (Adam; class weights n / (classes_present * n_class), so
// the dominant "run" class does not drown the others) and fills `router->info`. Layers without
// examples keep their weights. INVALID_ARGUMENT for an example of a wrong size, layer, or label.
absl::Status TrainLayerRouter(std::span<const RouterExample> examples, const RouterTrainOptions& options,
                              LayerRouter* router);

// Checks shapes and finiteness and that the set belongs to `model` (FAILED_PRECONDITION otherwise).
absl::Status ValidateLayerRouter(const LayerRouter& router, const ModelIdentity& model);

absl::Status WriteLayerRouter(const LayerRouter& router, const std::string& dir);
// Structural errors are INVALID_ARGUMENT naming the file; NOT_FOUND when `dir` holds no router set.
absl::StatusOr<LayerRouter> ReadLayerRouter(const std::string& dir);

}  // namespace moe

#endif  // MOE_ROUTER_LAYER_ROUTER_H_
