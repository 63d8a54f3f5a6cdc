// Dr.LLM supervision: Monte Carlo tree search over a prompt's layer paths with the project's engine,
// and the router training examples the paths it finds give.
//
// A tree node is a layer path; the root is the full model (every layer once). An action changes layers
// the node still runs once: skip one layer, skip two consecutive layers, or repeat one layer. Each
// simulation selects by UCB (exploration constant c), expands one untried action, and scores the new
// path by one greedy generation: reward 1 when the answer is exactly right, minus
// length_penalty * layers executed / num_layers. The label of a prompt is the shortest correct path
// found (fewest layers executed; ties: fewest changes from the full model, then first found).
#ifndef MOE_ROUTER_LAYER_SEARCH_H_
#define MOE_ROUTER_LAYER_SEARCH_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/tokenizer.h"
#include "common/splitmix.h"
#include "engine/layer_path.h"
#include "engine/model.h"
#include "router/layer_router.h"

namespace moe {

struct LayerSearchOptions {
  int64_t simulations = 32;     // per prompt; simulations that reach a checked path cost no generation
  double exploration = 1.8;     // UCB constant c
  double length_penalty = 0.1;  // reward -= length_penalty * layers executed / num_layers
  uint64_t seed = 1;
};

// The search for one prompt. Drive it with Next / Report until Next returns nothing.
class LayerPathSearch {
 public:
  LayerPathSearch(int64_t num_layers, const LayerSearchOptions& options);

  // The next path whose greedy answer must be checked, or nullopt when the simulations are spent.
  // Paths already checked are scored from memory inside Next. Returns the same path until Report.
  std::optional<LayerPath> Next();
  // Whether the path Next returned answered exactly right.
  void Report(bool correct);

  std::optional<LayerPath> ShortestCorrect() const;
  std::optional<bool> full_path_correct() const;
  int64_t generations() const { return static_cast<int64_t>(checked_.size()); }

 private:
  enum class ActionKind : uint8_t { kSkipOne, kSkipTwo, kRepeat };
  struct Action {
    ActionKind kind;
    int32_t layer;
  };
  struct Node {
    LayerPath path;
    int parent = -1;
    std::vector<int> children;
    std::vector<Action> untried;
    int64_t visits = 0;
    double value = 0;  // sum of rewards
  };
  int AddNode(LayerPath path, int parent);
  double Reward(const LayerPath& path, bool correct) const;
  void Backpropagate(int node, double reward);

  int64_t num_layers_;
  LayerSearchOptions options_;
  SplitMix64 rng_;
  std::vector<Node> nodes_;
  std::map<LayerPath, bool> checked_;
  std::vector<LayerPath> checked_order_;
  int64_t simulations_done_ = 0;
  int pending_ = -1;  // node waiting for Report
};

struct LabeledPrompt {
  std::vector<int32_t> prompt;
  std::optional<LayerPath> path;  // shortest correct path; none when no path answered right
  bool full_path_correct = false;
  int64_t generations = 0;
};

// Runs one search per prompt (`batch_size` searches advance together, their generations batched),
// checking greedy completions of at most `max_tokens` tokens against `answers` (decoded text, EOS
// dropped, exact match).
absl::StatusOr<std::vector<LabeledPrompt>> SearchLayerPaths(Model& model, const Tokenizer& tokenizer,
                                                            const std::vector<std::vector<int32_t>>& prompts,
                                                            const std::vector<std::string>& answers,
                                                            int64_t max_tokens, const LayerSearchOptions& options,
                                                            int64_t batch_size);

// For every labelled prompt, the pooled hidden states entering each layer while it runs its label path
// (one prefill per prompt), labelled with that layer's run count. Prompts without a path are skipped.
absl::StatusOr<std::vector<RouterExample>> CollectRouterExamples(Model& model, const std::vector<LabeledPrompt>& labeled,
                                                                 int64_t batch_size);

}  // namespace moe

#endif  // MOE_ROUTER_LAYER_SEARCH_H_
