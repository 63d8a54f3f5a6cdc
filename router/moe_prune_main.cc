// moe-prune: builds task expert maps from the task suite's training data.
//   moe-prune --model DIR --tasks data/tasks --out maps [--task add,sort] [--methods uncurl,frequency]
//             [--pruning-factors 2,4] [--experts-kept 7,6] [--examples 1000]
// For every task it runs --examples training examples (prompt + answer, teacher-forced) through the
// engine, collects router logits and expert usage per MoE layer, and writes one map directory per method
// and pruning factor p (E/p experts per layer remain): <out>/<task>-<method>-p<p>, and per --experts-kept
// K (finer steps than integer p): <out>/<task>-<method>-k<K> (see router/expert_map.h). Prints one line per
// map: its groups per layer and "reachable=" the mean distinct experts a token can reach per layer.
// Exit 1 on bad input.
#include <iostream>
#include <map>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "checkpoint/tokenizer.h"
#include "common/flags.h"
#include "common/log.h"
#include "eval/task_suite.h"
#include "router/expert_map.h"
#include "router/pruning.h"
#include "router/router_stats.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(std::string, tasks, "data/tasks", "task suite directory");
ABSL_FLAG(std::string, split, "train", "split whose examples build the maps");
ABSL_FLAG(std::string, task, "", "comma-separated tasks (empty = every task)");
ABSL_FLAG(std::string, methods, "uncurl,frequency", "uncurl and/or frequency");
ABSL_FLAG(std::string, pruning_factors, "2,4", "comma-separated pruning factors p (E/p experts remain per layer)");
ABSL_FLAG(std::string, experts_kept, "", "comma-separated experts (groups) kept per layer, named -k<K>");
ABSL_FLAG(int64_t, examples, 1000, "training examples per task");
ABSL_FLAG(std::string, out, "maps", "output directory (one sub-directory per map)");
ABSL_FLAG(int32_t, threads, 0, "threads (0 = one per core)");

namespace {

using moe::Fail;

std::string Members(const moe::LayerExpertMap& lm) {
  std::string s;
  for (const moe::MergedExpert& m : lm.merged) {
    absl::StrAppend(&s, " {");
    for (size_t i = 0; i < m.members.size(); ++i) absl::StrAppend(&s, i ? "," : "", m.members[i]);
    absl::StrAppend(&s, "}");
  }
  for (size_t e = 0; e < lm.slot_to_expert.size(); ++e) {
    if (lm.slot_to_expert[e] == static_cast<int32_t>(e)) absl::StrAppend(&s, " ", e);
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  moe::LogProgramName() = "moe-prune";
  moe::ParseFlags(argc, argv);
  if (absl::GetFlag(FLAGS_model).empty()) return Fail("--model is required");
  std::vector<int64_t> factors, kept_counts;
  for (absl::string_view f : absl::StrSplit(absl::GetFlag(FLAGS_pruning_factors), ',', absl::SkipEmpty())) {
    int64_t p = 0;
    if (!absl::SimpleAtoi(f, &p) || p < 1) return Fail(absl::StrCat("bad pruning factor '", std::string(f), "'"));
    factors.push_back(p);
  }
  for (absl::string_view f : absl::StrSplit(absl::GetFlag(FLAGS_experts_kept), ',', absl::SkipEmpty())) {
    int64_t k = 0;
    if (!absl::SimpleAtoi(f, &k) || k < 1) return Fail(absl::StrCat("bad --experts-kept '", std::string(f), "'"));
    kept_counts.push_back(k);
  }
  std::vector<std::string> methods = absl::StrSplit(absl::GetFlag(FLAGS_methods), ',', absl::SkipEmpty());
  for (const std::string& m : methods) {
    if (m != "uncurl" && m != "frequency") return Fail(absl::StrCat("unknown method '", m, "' (uncurl or frequency)"));
  }
  auto tool_model = moe::OpenToolModel(absl::GetFlag(FLAGS_model));
  if (!tool_model.ok()) return Fail(tool_model.status().ToString());
  std::shared_ptr<const moe::ModelSource> source = tool_model->source;
  const moe::ModelConfig& c = source->config();
  // (experts kept, name suffix) for every requested size.
  std::vector<std::pair<int64_t, std::string>> sizes;
  for (int64_t p : factors) {
    if (c.num_experts % p != 0) return Fail(absl::StrCat("pruning factor ", p, " does not divide ", c.num_experts, " experts"));
    sizes.push_back({c.num_experts / p, absl::StrCat("p", p)});
  }
  for (int64_t k : kept_counts) {
    if (k > c.num_experts) return Fail(absl::StrCat("--experts-kept ", k, " is more than the model's ", c.num_experts, " experts"));
    sizes.push_back({k, absl::StrCat("k", k)});
  }
  for (const auto& [kept, suffix] : sizes) {
    if (std::find(methods.begin(), methods.end(), "frequency") != methods.end() && kept < c.top_k) {
      return Fail(absl::StrCat("frequency pruning (", suffix, ") keeps ", kept, " experts, fewer than top-k ", c.top_k));
    }
  }
  const moe::Tokenizer& tokenizer = *tool_model->tokenizer;
  const moe::ModelIdentity* identity = &tool_model->identity;
  auto suite = moe::LoadTaskSuite(absl::GetFlag(FLAGS_tasks), absl::GetFlag(FLAGS_split), absl::GetFlag(FLAGS_examples));
  if (!suite.ok()) return Fail(suite.status().ToString());
  if (absl::Status s = moe::SelectTasks(absl::GetFlag(FLAGS_task), &*suite); !s.ok()) return Fail(s.ToString());

  moe::ThreadPool pool(absl::GetFlag(FLAGS_threads));
  auto weights = moe::LoadModelWeights(source, {}, &pool);
  if (!weights.ok()) return Fail(weights.status().ToString());
  moe::Model model(std::move(*weights), &pool);
  // Merged weights are stored like the checkpoint's experts.
  auto probe = source->Tensor(c.ExpertTensor(c.IsMoeLayer(0) ? 0 : c.num_layers - 1, 0, moe::FfnProjection::kDown),
                              {c.hidden_size, c.expert_ffn_size});
  const moe::DType storage = probe.ok() && probe->dtype == moe::DType::kBF16 ? moe::DType::kBF16 : moe::DType::kF32;

  for (const auto& [task, examples] : *suite) {
    std::vector<std::vector<int32_t>> sequences;
    for (const moe::TaskExample& ex : examples) {
      std::vector<int32_t> ids;
      if (c.bos_token_id >= 0) ids.push_back(static_cast<int32_t>(c.bos_token_id));
      auto text = tokenizer.Encode(ex.prompt + ex.answer);
      if (!text.ok()) return Fail(text.status().ToString());
      ids.insert(ids.end(), text->begin(), text->end());
      sequences.push_back(std::move(ids));
    }
    auto stats = moe::CollectRouterStats(model, sequences, 64);
    if (!stats.ok()) return Fail(stats.status().ToString());
    for (const std::string& method : methods) {
      for (const auto& [kept, suffix] : sizes) {
        moe::ExpertMap map;
        map.name = absl::StrCat(task, "-", method, "-", suffix);
        map.task = task;
        map.method = method;
        map.experts_kept = kept;
        map.pruning_factor = static_cast<double>(c.num_experts) / static_cast<double>(kept);
        map.model = *identity;
        for (int64_t l = 0; l < c.num_layers; ++l) {
          if (!c.IsMoeLayer(l)) continue;
          if (method == "frequency") {
            map.layers.push_back(moe::BuildFrequencyLayer(l, (*stats)[l], kept));
            continue;
          }
          auto layer = moe::BuildUncurlLayer(l, (*stats)[l], kept, [&](int32_t e) { return moe::ReadExpertFfn(*source, l, e); });
          if (!layer.ok()) return Fail(layer.status().ToString());
          map.layers.push_back(std::move(*layer));
        }
        if (absl::Status s = moe::ValidateExpertMap(map, *identity, c.top_k); !s.ok()) return Fail(s.ToString());
        for (moe::LayerExpertMap& lm : map.layers) lm.experts_per_token = moe::MeanExpertsPerToken((*stats)[lm.layer], lm, c);
        const std::string dir = absl::StrCat(absl::GetFlag(FLAGS_out), "/", map.name);
        if (absl::Status s = moe::WriteExpertMap(map, dir, storage); !s.ok()) return Fail(s.ToString());
        std::cout << absl::StrFormat("%s: %d tokens ->", dir, (*stats)[map.layers[0].layer].num_tokens());
        for (const moe::LayerExpertMap& lm : map.layers) std::cout << " | layer " << lm.layer << ":" << Members(lm);
        std::cout << absl::StrFormat(" | reachable=%.2f experts/token=%.2f\n", map.MeanReachableExperts(), map.MeanExpertsPerToken());
      }
    }
  }
  return 0;
}
