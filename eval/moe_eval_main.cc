// moe-eval: exact-match accuracy of a model on the task suite, with greedy decoding.
//   moe-eval --model DIR --tasks data/tasks [--split test] [--limit N] [--json OUT] [--min-accuracy X]
//            [--expert-map maps/{task}-uncurl-p2] [--layer-router routers/layers [--skip-threshold T]]
// Prints "<task> accuracy=<fraction> n=<count>" per task; --json also records per-layer expert usage
// per task. Exit 1 on bad input, 2 if a task falls below --min-accuracy.
#include <fstream>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "common/flags.h"
#include "common/log.h"
#include "eval/cluster_backend.h"
#include "eval/engine_backend.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(std::string, tasks, "data/tasks", "task suite directory");
ABSL_FLAG(std::string, split, "test", "train, dev or test");
ABSL_FLAG(int64_t, limit, 0, "examples per task (0 = all)");
ABSL_FLAG(int64_t, batch, 64, "prompts per batch");
ABSL_FLAG(int64_t, max_tokens, 16, "generation limit per answer");
ABSL_FLAG(std::string, json, "", "write results (with expert usage) to this file");
ABSL_FLAG(double, min_accuracy, 0.0, "exit 2 if any task scores below this");
ABSL_FLAG(std::string, backend, "engine", "engine (in-process) or cluster (--server)");
ABSL_FLAG(std::string, server, "", "cluster address for --backend cluster");
ABSL_FLAG(std::string, task, "",
          "cluster backend: task expert map name sent with every request; \"{task}\" becomes the task's name "
          "(e.g. {task}-uncurl-p2)");
ABSL_FLAG(std::string, expert_map, "",
          "engine backend: serve each task through this expert map directory; \"{task}\" becomes the task's name "
          "(e.g. maps/{task}-uncurl-p2)");
ABSL_FLAG(std::string, layer_router, "",
          "Dr.LLM layer routing: engine backend: a router directory (moe-layer-route); cluster backend: the name of "
          "a loaded layer router");
ABSL_FLAG(double, skip_threshold, -1, "layer routing knob: skip a layer when its skip probability reaches this "
                                      "(lower skips more); < 0: the router's default");
ABSL_FLAG(int32_t, threads, 0, "threads (0 = one per core)");
ABSL_FLAG(bool, print_usage, false, "print, per MoE layer, the share of each task's tokens routed to each expert");

namespace {
using moe::Fail;

int Report(const std::vector<moe::TaskResult>& results, double all2all_bytes_per_token);
void PrintUsage(const std::vector<moe::TaskResult>& results);
}  // namespace

int main(int argc, char** argv) {
  moe::LogProgramName() = "moe-eval";
  moe::ParseFlags(argc, argv);
  const std::string backend_name = absl::GetFlag(FLAGS_backend);
  if (backend_name != "engine" && backend_name != "cluster") return Fail("--backend must be engine or cluster");
  auto suite = moe::LoadTaskSuite(absl::GetFlag(FLAGS_tasks), absl::GetFlag(FLAGS_split), absl::GetFlag(FLAGS_limit));
  if (!suite.ok()) return Fail(suite.status().ToString());
  if (backend_name == "cluster") {
    if (absl::GetFlag(FLAGS_server).empty()) return Fail("--backend cluster needs --server");
    moe::ClusterBackend cluster(absl::GetFlag(FLAGS_server), absl::GetFlag(FLAGS_task));
    cluster.SetLayerRouter(absl::GetFlag(FLAGS_layer_router), absl::GetFlag(FLAGS_skip_threshold));
    auto results = moe::EvaluateTasks(cluster, *suite, absl::GetFlag(FLAGS_batch), absl::GetFlag(FLAGS_max_tokens));
    if (!results.ok()) return Fail(results.status().ToString());
    return Report(*results, cluster.completion_tokens() ? static_cast<double>(cluster.all2all_bytes()) / cluster.completion_tokens() : 0);
  }
  if (absl::GetFlag(FLAGS_model).empty()) return Fail("--model is required");
  auto source = moe::ModelSource::Open(absl::GetFlag(FLAGS_model));
  if (!source.ok()) return Fail(source.status().ToString());
  if ((*source)->tokenizer_path().empty()) return Fail("the model has no tokenizer.model");
  auto tokenizer = moe::Tokenizer::Load((*source)->tokenizer_path());
  if (!tokenizer.ok()) return Fail(tokenizer.status().ToString());
  moe::ThreadPool pool(absl::GetFlag(FLAGS_threads));
  auto weights = moe::LoadModelWeights(std::move(*source), {}, &pool);
  if (!weights.ok()) return Fail(weights.status().ToString());
  moe::Model model(std::move(*weights), &pool);
  moe::EngineBackend backend(&model, tokenizer->get(), absl::GetFlag(FLAGS_expert_map));
  std::optional<moe::LayerRouter> layer_router;
  if (!absl::GetFlag(FLAGS_layer_router).empty()) {
    auto router = moe::ReadLayerRouter(absl::GetFlag(FLAGS_layer_router));
    if (!router.ok()) return Fail(router.status().ToString());
    auto identity = moe::IdentifyModel(*model.weights().source);
    if (!identity.ok()) return Fail(identity.status().ToString());
    if (absl::Status s = moe::ValidateLayerRouter(*router, *identity); !s.ok()) return Fail(s.ToString());
    layer_router = std::move(*router);
    backend.SetLayerRouter(&*layer_router, absl::GetFlag(FLAGS_skip_threshold));
  }
  auto results = moe::EvaluateTasks(backend, *suite, absl::GetFlag(FLAGS_batch), absl::GetFlag(FLAGS_max_tokens));
  if (!results.ok()) return Fail(results.status().ToString());
  return Report(*results, -1);
}

namespace {
// Per layer, a task x expert table of the percentage of the task's routed token slots each expert got.
void PrintUsage(const std::vector<moe::TaskResult>& results) {
  if (results.empty() || results[0].expert_usage.empty()) return;
  for (size_t layer = 0; layer < results[0].expert_usage.size(); ++layer) {
    const size_t experts = results[0].expert_usage[layer].size();
    if (experts == 0) continue;
    std::cout << "\nexpert usage, layer " << layer << " (% of the task's routed slots)\n| task |";
    for (size_t e = 0; e < experts; ++e) std::cout << " e" << e << " |";
    std::cout << "\n|---|";
    for (size_t e = 0; e < experts; ++e) std::cout << "---|";
    std::cout << "\n";
    for (const moe::TaskResult& r : results) {
      int64_t total = 0;
      for (int64_t n : r.expert_usage[layer]) total += n;
      std::cout << "| " << r.task << " |";
      for (int64_t n : r.expert_usage[layer]) std::cout << absl::StrFormat(" %.0f |", total ? 100.0 * n / total : 0.0);
      std::cout << "\n";
    }
  }
}

// Prints one line per task (and the average), writes --json, and returns the exit code.
int Report(const std::vector<moe::TaskResult>& results, double all2all_bytes_per_token) {
  bool below = false;
  double sum = 0;
  for (const moe::TaskResult& r : results) {
    std::cout << absl::StrFormat("%s accuracy=%.4f n=%d tokens_per_s=%.1f", r.task, r.accuracy(), r.total,
                                 r.seconds > 0 ? r.traffic.completion_tokens / r.seconds : 0.0);
    if (all2all_bytes_per_token >= 0 && r.traffic.completion_tokens > 0) {
      std::cout << absl::StrFormat(" all2all_bytes_per_token=%.1f",
                                   static_cast<double>(r.traffic.all2all_bytes) / r.traffic.completion_tokens);
    }
    if (r.traffic.layers_executed > 0 && r.traffic.completion_tokens > 0) {
      std::cout << absl::StrFormat(" layers_per_token=%.2f",
                                   static_cast<double>(r.traffic.layers_executed) / r.traffic.completion_tokens);
    }
    std::cout << "\n";
    below |= r.accuracy() < absl::GetFlag(FLAGS_min_accuracy);
    sum += r.accuracy();
  }
  std::cout << absl::StrFormat("average accuracy=%.4f\n", sum / static_cast<double>(results.size()));
  int64_t tokens = 0, processed = 0, bytes = 0, layers = 0;
  double seconds = 0;
  for (const moe::TaskResult& r : results) {
    tokens += r.traffic.completion_tokens;
    layers += r.traffic.layers_executed;
    processed += r.traffic.prompt_tokens + r.traffic.completion_tokens;
    bytes += r.traffic.all2all_bytes;
    seconds += r.seconds;
  }
  std::cout << absl::StrFormat("generated tokens per second=%.1f\n", seconds > 0 ? tokens / seconds : 0.0);
  if (layers > 0 && tokens > 0) {
    std::cout << absl::StrFormat("layers per generated token=%.2f\n", static_cast<double>(layers) / tokens);
  }
  // Answers of different lengths change the per-generated-token figure; per processed token does not.
  if (all2all_bytes_per_token >= 0 && processed > 0) {
    std::cout << absl::StrFormat("all2all bytes per processed token=%.1f\n", static_cast<double>(bytes) / processed);
  }
  if (all2all_bytes_per_token >= 0) std::cout << absl::StrFormat("all2all bytes per generated token=%.1f\n", all2all_bytes_per_token);
  if (absl::GetFlag(FLAGS_print_usage)) PrintUsage(results);
  if (!absl::GetFlag(FLAGS_json).empty()) {
    std::ofstream out(absl::GetFlag(FLAGS_json));
    out << moe::TaskResultsToJson(results).dump(1) << "\n";
    if (!out) return Fail("cannot write " + absl::GetFlag(FLAGS_json));
  }
  return below ? 2 : 0;
}
}  // namespace
