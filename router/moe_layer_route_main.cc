// moe-layer-route: Dr.LLM layer routers from the task suite's training data.
//   moe-layer-route --model DIR --tasks data/tasks --out routers/layers [--task add,sort] [--examples 200]
//                   [--simulations 32] [--length-penalty 0.1] [--epochs 60] [--skip-threshold 0.5]
// For every task it runs an MCTS over layer paths for each of --examples training prompts with the
// engine (see router/layer_search.h), prints what the search found, trains one router per layer on
// all tasks' labelled prompts (router/layer_router.h) and writes the router set to --out (its name is
// the directory's last component unless --name). Exit 1 on bad input.
#include <filesystem>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "checkpoint/tokenizer.h"
#include "common/flags.h"
#include "common/log.h"
#include "eval/task_suite.h"
#include "router/layer_router.h"
#include "router/layer_search.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(std::string, tasks, "data/tasks", "task suite directory");
ABSL_FLAG(std::string, split, "train", "split whose examples label the routers");
ABSL_FLAG(std::string, task, "", "comma-separated tasks (empty = every task)");
ABSL_FLAG(int64_t, examples, 200, "training prompts per task");
ABSL_FLAG(int64_t, simulations, 32, "MCTS simulations per prompt");
ABSL_FLAG(double, exploration, 1.8, "UCB exploration constant");
ABSL_FLAG(double, length_penalty, 0.1, "reward penalty per executed layer, as a fraction of all layers");
ABSL_FLAG(int64_t, epochs, 60, "router training epochs");
ABSL_FLAG(double, learning_rate, 2e-3, "router training learning rate (Adam)");
ABSL_FLAG(double, skip_threshold, 0.5, "default skip threshold stored with the routers");
ABSL_FLAG(int64_t, batch, 64, "prompts searched (generations batched) at once");
ABSL_FLAG(std::string, out, "routers/layers", "output directory");
ABSL_FLAG(std::string, name, "", "router set name (default: the --out directory's name)");
ABSL_FLAG(uint64_t, seed, 1, "search and training seed");
ABSL_FLAG(int32_t, threads, 0, "threads (0 = one per core)");

using moe::Fail;

int main(int argc, char** argv) {
  moe::LogProgramName() = "moe-layer-route";
  moe::ParseFlags(argc, argv);
  if (absl::GetFlag(FLAGS_model).empty()) return Fail("--model is required");
  if (absl::GetFlag(FLAGS_examples) < 1 || absl::GetFlag(FLAGS_simulations) < 1 || absl::GetFlag(FLAGS_batch) < 1 ||
      absl::GetFlag(FLAGS_epochs) < 0) {
    return Fail("--examples, --simulations and --batch must be >= 1, --epochs >= 0");
  }
  const double threshold = absl::GetFlag(FLAGS_skip_threshold);
  if (!(threshold >= 0 && threshold <= 1)) return Fail("--skip-threshold must be in [0, 1]");
  auto tool_model = moe::OpenToolModel(absl::GetFlag(FLAGS_model));
  if (!tool_model.ok()) return Fail(tool_model.status().ToString());
  const moe::ModelConfig& c = tool_model->source->config();
  const moe::Tokenizer& tokenizer = *tool_model->tokenizer;
  const moe::ModelIdentity& identity = tool_model->identity;
  auto suite = moe::LoadTaskSuite(absl::GetFlag(FLAGS_tasks), absl::GetFlag(FLAGS_split), absl::GetFlag(FLAGS_examples));
  if (!suite.ok()) return Fail(suite.status().ToString());
  if (absl::Status s = moe::SelectTasks(absl::GetFlag(FLAGS_task), &*suite); !s.ok()) return Fail(s.ToString());
  moe::ThreadPool pool(absl::GetFlag(FLAGS_threads));
  auto weights = moe::LoadModelWeights(tool_model->source, {}, &pool);
  if (!weights.ok()) return Fail(weights.status().ToString());
  moe::Model model(std::move(*weights), &pool);

  moe::LayerSearchOptions search;
  search.simulations = absl::GetFlag(FLAGS_simulations);
  search.exploration = absl::GetFlag(FLAGS_exploration);
  search.length_penalty = absl::GetFlag(FLAGS_length_penalty);
  search.seed = absl::GetFlag(FLAGS_seed);
  std::string name = absl::GetFlag(FLAGS_name);
  if (name.empty()) name = std::filesystem::path(absl::GetFlag(FLAGS_out)).filename().string();
  moe::LayerRouter router = moe::NewLayerRouter(name, identity, absl::GetFlag(FLAGS_seed));
  router.skip_threshold = threshold;
  std::vector<moe::LabeledPrompt> all_labeled;
  for (const auto& [task, examples] : *suite) {
    std::vector<std::vector<int32_t>> prompts;
    std::vector<std::string> answers;
    int64_t max_tokens = 1;
    for (const moe::TaskExample& ex : examples) {
      std::vector<int32_t> ids;
      if (c.bos_token_id >= 0) ids.push_back(static_cast<int32_t>(c.bos_token_id));
      auto text = tokenizer.Encode(ex.prompt);
      auto answer = tokenizer.Encode(ex.answer);
      if (!text.ok() || !answer.ok()) return Fail(absl::StrCat(task, ": cannot tokenize an example"));
      ids.insert(ids.end(), text->begin(), text->end());
      prompts.push_back(std::move(ids));
      answers.push_back(ex.answer);
      max_tokens = std::max<int64_t>(max_tokens, static_cast<int64_t>(answer->size()) + 1);  // + EOS
    }
    auto labeled = moe::SearchLayerPaths(model, tokenizer, prompts, answers, max_tokens, search, absl::GetFlag(FLAGS_batch));
    if (!labeled.ok()) return Fail(labeled.status().ToString());
    int64_t full_right = 0, found = 0, generations = 0, layers = 0;
    std::vector<std::array<int64_t, moe::kRouterClasses>> label_counts(static_cast<size_t>(c.num_layers));
    for (const moe::LabeledPrompt& l : *labeled) {
      full_right += l.full_path_correct;
      generations += l.generations;
      if (!l.path) continue;
      ++found;
      layers += moe::LayersExecuted(*l.path, c.num_layers);
      for (int64_t k = 0; k < c.num_layers; ++k) ++label_counts[k][(*l.path)[k]];
    }
    std::cout << absl::StrFormat("%s: prompts=%d full_model_right=%d some_path_right=%d mean_layers_of_shortest=%.2f "
                                 "generations=%d labels(skip/run/repeat):",
                                 task, labeled->size(), full_right, found,
                                 found ? static_cast<double>(layers) / static_cast<double>(found) : 0.0, generations);
    for (int64_t k = 0; k < c.num_layers; ++k) {
      std::cout << absl::StrFormat(" L%d=%d/%d/%d", k, label_counts[k][0], label_counts[k][1], label_counts[k][2]);
    }
    std::cout << "\n" << std::flush;
    router.tasks.push_back(task);
    all_labeled.insert(all_labeled.end(), labeled->begin(), labeled->end());
  }
  auto examples = moe::CollectRouterExamples(model, all_labeled, absl::GetFlag(FLAGS_batch));
  if (!examples.ok()) return Fail(examples.status().ToString());
  router.examples = static_cast<int64_t>(examples->size()) / std::max<int64_t>(1, c.num_layers);
  moe::RouterTrainOptions train;
  train.epochs = absl::GetFlag(FLAGS_epochs);
  train.learning_rate = static_cast<float>(absl::GetFlag(FLAGS_learning_rate));
  train.seed = absl::GetFlag(FLAGS_seed);
  if (absl::Status s = moe::TrainLayerRouter(*examples, train, &router); !s.ok()) return Fail(s.ToString());
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const moe::LayerRouterLayerInfo& info = router.info[l];
    std::cout << absl::StrFormat("router layer %d: labels skip/run/repeat=%d/%d/%d class_weights=%.2f/%.2f/%.2f "
                                 "train_accuracy=%.3f\n",
                                 l, info.labels[0], info.labels[1], info.labels[2], info.class_weights[0],
                                 info.class_weights[1], info.class_weights[2], info.train_accuracy);
  }
  if (absl::Status s = moe::ValidateLayerRouter(router, identity); !s.ok()) return Fail(s.ToString());
  if (absl::Status s = moe::WriteLayerRouter(router, absl::GetFlag(FLAGS_out)); !s.ok()) return Fail(s.ToString());
  std::cout << "wrote " << absl::GetFlag(FLAGS_out) << " (" << router.examples << " labelled prompts)\n";
  return 0;
}
