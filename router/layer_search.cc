#include "router/layer_search.h"

#include <algorithm>
#include <cmath>
#include <deque>

#include "common/status.h"
#include "engine/generator.h"

namespace moe {

LayerPathSearch::LayerPathSearch(int64_t num_layers, const LayerSearchOptions& options)
    : num_layers_(num_layers), options_(options), rng_(options.seed) {
  AddNode(LayerPath(static_cast<size_t>(num_layers), kRunLayer), -1);
}

int LayerPathSearch::AddNode(LayerPath path, int parent) {
  Node n;
  n.parent = parent;
  for (int32_t l = 0; l < num_layers_; ++l) {
    if (path[l] != kRunLayer) continue;
    n.untried.push_back({ActionKind::kSkipOne, l});
    n.untried.push_back({ActionKind::kRepeat, l});
    if (l + 1 < num_layers_ && path[l + 1] == kRunLayer) n.untried.push_back({ActionKind::kSkipTwo, l});
  }
  n.path = std::move(path);
  nodes_.push_back(std::move(n));
  const int id = static_cast<int>(nodes_.size()) - 1;
  if (parent >= 0) nodes_[parent].children.push_back(id);
  return id;
}

double LayerPathSearch::Reward(const LayerPath& path, bool correct) const {
  return (correct ? 1.0 : 0.0) -
         options_.length_penalty * static_cast<double>(LayersExecuted(path, num_layers_)) / static_cast<double>(num_layers_);
}

void LayerPathSearch::Backpropagate(int node, double reward) {
  for (; node >= 0; node = nodes_[node].parent) {
    ++nodes_[node].visits;
    nodes_[node].value += reward;
  }
  ++simulations_done_;
}

std::optional<LayerPath> LayerPathSearch::Next() {
  if (pending_ >= 0) return nodes_[pending_].path;
  while (simulations_done_ < options_.simulations) {
    int node = 0;
    if (nodes_[0].visits > 0) {
      while (true) {
        Node& n = nodes_[node];
        if (!n.untried.empty()) {  // expand one untried action, chosen at random
          const size_t pick = static_cast<size_t>(rng_.Next() % n.untried.size());
          const Action a = n.untried[pick];
          n.untried.erase(n.untried.begin() + static_cast<std::ptrdiff_t>(pick));
          LayerPath child = n.path;
          switch (a.kind) {
            case ActionKind::kSkipOne: child[a.layer] = kSkipLayer; break;
            case ActionKind::kSkipTwo: child[a.layer] = child[a.layer + 1] = kSkipLayer; break;
            case ActionKind::kRepeat: child[a.layer] = kRepeatLayer; break;
          }
          node = AddNode(std::move(child), node);
          break;
        }
        if (n.children.empty()) break;  // nothing left to change: score this path again
        const double log_parent = std::log(static_cast<double>(n.visits));
        int best = -1;
        double best_score = -1e300;
        for (int c : n.children) {
          const Node& child = nodes_[c];
          const double score = child.value / static_cast<double>(child.visits) +
                               options_.exploration * std::sqrt(log_parent / static_cast<double>(child.visits));
          if (score > best_score) best_score = score, best = c;
        }
        node = best;
      }
    }
    auto known = checked_.find(nodes_[node].path);
    if (known != checked_.end()) {
      Backpropagate(node, Reward(known->first, known->second));
      continue;
    }
    pending_ = node;
    return nodes_[node].path;
  }
  return std::nullopt;
}

void LayerPathSearch::Report(bool correct) {
  if (pending_ < 0) return;
  const LayerPath& path = nodes_[pending_].path;
  checked_[path] = correct;
  checked_order_.push_back(path);
  Backpropagate(pending_, Reward(path, correct));
  pending_ = -1;
}

std::optional<LayerPath> LayerPathSearch::ShortestCorrect() const {
  auto changes = [](const LayerPath& p) { return std::count_if(p.begin(), p.end(), [](uint8_t r) { return r != kRunLayer; }); };
  std::optional<LayerPath> best;
  for (const LayerPath& p : checked_order_) {
    if (!checked_.at(p)) continue;
    if (!best || LayersExecuted(p, num_layers_) < LayersExecuted(*best, num_layers_) ||
        (LayersExecuted(p, num_layers_) == LayersExecuted(*best, num_layers_) && changes(p) < changes(*best))) {
      best = p;
    }
  }
  return best;
}

std::optional<bool> LayerPathSearch::full_path_correct() const {
  auto it = checked_.find(nodes_[0].path);
  if (it == checked_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<std::vector<LabeledPrompt>> SearchLayerPaths(Model& model, const Tokenizer& tokenizer,
                                                            const std::vector<std::vector<int32_t>>& prompts,
                                                            const std::vector<std::string>& answers,
                                                            int64_t max_tokens, const LayerSearchOptions& options,
                                                            int64_t batch_size) {
  if (prompts.size() != answers.size()) return absl::InvalidArgumentError("one answer per prompt");
  const int64_t num_layers = model.config().num_layers;
  std::vector<LabeledPrompt> out(prompts.size());
  std::vector<std::optional<LayerPathSearch>> searches(prompts.size());
  std::deque<size_t> waiting;
  for (size_t i = 0; i < prompts.size(); ++i) waiting.push_back(i);
  std::vector<size_t> active;
  while (!active.empty() || !waiting.empty()) {
    while (static_cast<int64_t>(active.size()) < batch_size && !waiting.empty()) {
      const size_t i = waiting.front();
      waiting.pop_front();
      LayerSearchOptions per_prompt = options;
      per_prompt.seed = options.seed + i;
      searches[i].emplace(num_layers, per_prompt);
      active.push_back(i);
    }
    std::vector<GenerationRequest> requests;
    std::vector<size_t> still_active;  // each asked for one generation below, in order
    for (size_t i : active) {
      std::optional<LayerPath> path = searches[i]->Next();
      if (!path) {  // this prompt's search is over
        out[i] = {prompts[i], searches[i]->ShortestCorrect(), searches[i]->full_path_correct().value_or(false),
                  searches[i]->generations()};
        searches[i].reset();
        continue;
      }
      GenerationRequest r;
      r.prompt = prompts[i];
      r.max_tokens = max_tokens;
      r.layer_path = std::move(*path);
      requests.push_back(std::move(r));
      still_active.push_back(i);
    }
    active = std::move(still_active);
    if (requests.empty()) continue;
    MOE_ASSIGN_OR_RETURN(std::vector<GenerationResult> results, Generate(model, requests));
    for (size_t j = 0; j < active.size(); ++j) {
      std::vector<int32_t>& tokens = results[j].tokens;
      if (results[j].finish == FinishReason::kEos) tokens.pop_back();  // kEos: the last token is the EOS
      searches[active[j]]->Report(tokenizer.Decode(tokens) == answers[active[j]]);
    }
  }
  return out;
}

namespace {

// Answers with a fixed path and keeps what each layer's router would have seen.
class RecordingPolicy : public LayerPathPolicy {
 public:
  RecordingPolicy(const LayerPath& path, int64_t hidden_size) : path_(path), hidden_size_(hidden_size) {}
  int Decide(int64_t layer, const float* hidden, int64_t rows) const override {
    examples.push_back({layer, PooledWindows(hidden, rows, hidden_size_), path_[layer]});
    return path_[layer];
  }
  mutable std::vector<RouterExample> examples;

 private:
  const LayerPath& path_;
  int64_t hidden_size_;
};

}  // namespace

absl::StatusOr<std::vector<RouterExample>> CollectRouterExamples(Model& model, const std::vector<LabeledPrompt>& labeled,
                                                                 int64_t batch_size) {
  std::vector<const LabeledPrompt*> usable;
  for (const LabeledPrompt& l : labeled) {
    if (l.path) usable.push_back(&l);
  }
  std::vector<RouterExample> out;
  for (size_t first = 0; first < usable.size(); first += static_cast<size_t>(batch_size)) {
    const size_t end = std::min(usable.size(), first + static_cast<size_t>(batch_size));
    std::vector<std::unique_ptr<KvCache>> caches;
    std::vector<std::unique_ptr<RecordingPolicy>> policies;
    std::vector<ForwardInput> inputs;
    for (size_t i = first; i < end; ++i) {
      caches.push_back(model.NewCache());
      policies.push_back(std::make_unique<RecordingPolicy>(*usable[i]->path, model.config().hidden_size));
      inputs.push_back({caches.back().get(), usable[i]->prompt, false, nullptr, policies.back().get()});
    }
    MOE_RETURN_IF_ERROR(model.Forward(inputs).status());
    for (auto& p : policies) {
      for (RouterExample& ex : p->examples) out.push_back(std::move(ex));
    }
  }
  return out;
}

}  // namespace moe
