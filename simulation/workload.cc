#include "simulation/workload.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/splitmix.h"
#include "common/status.h"
#include "coordinator/placement.h"
#include "simulation/json_fields.h"

namespace moe::sim {

ModelShape ModelShape::FromConfig(const ModelConfig& c, const std::string& name, double bytes_per_weight,
                                  double activation_bytes) {
  ModelShape s;
  s.name = name;
  s.hidden = c.hidden_size;
  s.layers = c.num_layers;
  s.heads = c.num_heads;
  s.kv_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  s.vocab = c.vocab_size;
  s.num_experts = c.num_experts;
  s.top_k = c.top_k;
  s.expert_ffn = c.expert_ffn_size;
  s.dense_ffn = c.dense_ffn_size;
  s.shared_expert_ffn = c.shared_expert_ffn_size;
  for (int64_t l = 0; l < c.num_layers; ++l) s.moe_layer.push_back(c.IsMoeLayer(l));
  s.bytes_per_weight = bytes_per_weight;
  s.bytes_per_kv = bytes_per_weight;
  s.activation_bytes = activation_bytes;
  return s;
}

int64_t ModelShape::num_moe_layers() const { return std::count(moe_layer.begin(), moe_layer.end(), true); }

double ModelShape::AttentionWeightBytes() const {
  const double h = static_cast<double>(hidden), q = static_cast<double>(heads * head_dim),
               kv = static_cast<double>(kv_heads * head_dim);
  return (2.0 * h * q + 2.0 * h * kv) * bytes_per_weight;
}

ExpertPopularity ExpertPopularity::Zipf(const ModelShape& shape, double s, uint64_t seed) {
  ExpertPopularity p;
  SplitMix64 bits(seed ^ 0x5A17F00Dull);
  for (int64_t l = 0; l < shape.layers; ++l) {
    std::vector<double> row;
    if (shape.moe_layer[l]) {
      std::vector<int64_t> order(static_cast<size_t>(shape.num_experts));
      std::iota(order.begin(), order.end(), 0);
      for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[bits.Next() % i]);  // Fisher-Yates
      row.assign(order.size(), 0.0);
      double total = 0;
      for (size_t rank = 0; rank < order.size(); ++rank) total += row[order[rank]] = std::pow(static_cast<double>(rank + 1), -s);
      for (double& x : row) x /= total;
    }
    p.popularity.push_back(std::move(row));
  }
  return p;
}

absl::StatusOr<ExpertPopularity> ExpertPopularity::FromLoad(const ModelShape& shape,
                                                            const std::vector<std::vector<double>>& load) {
  if (static_cast<int64_t>(load.size()) != shape.layers) {
    return absl::InvalidArgumentError(absl::StrCat("expert load has ", load.size(), " layers, the model ", shape.layers));
  }
  ExpertPopularity p;
  for (int64_t l = 0; l < shape.layers; ++l) {
    std::vector<double> row;
    if (shape.moe_layer[l]) {
      if (static_cast<int64_t>(load[l].size()) != shape.num_experts) {
        return absl::InvalidArgumentError(absl::StrCat("expert load layer ", l, " has ", load[l].size(), " experts, the model ",
                                                       shape.num_experts));
      }
      const double total = std::accumulate(load[l].begin(), load[l].end(), 0.0);
      if (!(total > 0) || std::any_of(load[l].begin(), load[l].end(), [](double x) { return !(x >= 0); })) {
        return absl::InvalidArgumentError(absl::StrCat("expert load layer ", l, ": loads must be >= 0 with a positive sum"));
      }
      for (double x : load[l]) row.push_back(x / total);
    }
    p.popularity.push_back(std::move(row));
  }
  return p;
}

absl::StatusOr<WorkloadSpec> WorkloadSpec::FromJson(const std::string& json_text, const std::string& source) {
  const nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  JsonFields f(j, source);
  WorkloadSpec w;
  w.rate = f.Number("rate", w.rate, 0);
  w.duration_s = f.Number("duration_s", w.duration_s, 0);
  w.concurrency = static_cast<int>(f.Int("concurrency", 0, 0, 1 << 20));
  w.requests = f.Int("requests", 0, 0);
  w.prompt_min = f.Int("prompt_min", w.prompt_min, 1);
  w.prompt_max = f.Int("prompt_max", w.prompt_min, 1);
  w.output_min = f.Int("output_min", w.output_min, 1);
  w.output_max = f.Int("output_max", w.output_min, 1);
  w.trace_path = f.String("trace", "");
  w.zipf = f.Number("zipf", 0, 0, 10);
  w.expert_load_path = f.String("expert_load", "");
  w.seed = static_cast<uint64_t>(f.Int("seed", 1, 0));
  const nlohmann::json& tasks = f.Raw("tasks");
  if (!tasks.is_null() && !tasks.is_array()) f.Fail("tasks", "must be an array");
  for (size_t i = 0; tasks.is_array() && i < tasks.size() && f.status().ok(); ++i) {
    JsonFields t(tasks[i], absl::StrCat(source, ".tasks[", i, "]"));
    TaskProfile p;
    p.name = t.String("name", absl::StrCat("task", i));
    p.share = t.Number("share", 0, 0, 1);
    p.kept_fraction = t.Number("kept_fraction", 1, 1e-9, 1);
    p.layer_run_rate = t.Number("layer_run_rate", 1, 1e-9, 1);
    p.experts_per_token = t.Number("experts_per_token", 0, 0);  // against top_k: SimulateServing
    MOE_RETURN_IF_ERROR(t.status());
    w.tasks.push_back(p);
  }
  MOE_RETURN_IF_ERROR(f.status());
  MOE_RETURN_IF_ERROR(w.Validate());
  return w;
}

absl::Status WorkloadSpec::Validate() const {
  if (prompt_max < prompt_min) return absl::InvalidArgumentError("workload: prompt_max must be >= prompt_min");
  if (output_max < output_min) return absl::InvalidArgumentError("workload: output_max must be >= output_min");
  if (prompt_min < 1 || output_min < 1) return absl::InvalidArgumentError("workload: lengths must be >= 1");
  if (concurrency > 0 && requests < 1) return absl::InvalidArgumentError("workload: a closed loop (concurrency) needs requests >= 1");
  if (concurrency > 0 && !trace_path.empty()) return absl::InvalidArgumentError("workload: trace and concurrency exclude each other");
  if (concurrency == 0 && trace_path.empty() && !(rate > 0)) return absl::InvalidArgumentError("workload: rate must be > 0 (or give a trace)");
  double shares = 0;
  for (const TaskProfile& t : tasks) shares += t.share;
  if (shares > 1 + 1e-9) return absl::InvalidArgumentError("workload: tasks' shares sum to more than 1");
  return absl::OkStatus();
}

namespace {

int PickTask(const WorkloadSpec& spec, double u) {
  for (size_t i = 0; i < spec.tasks.size(); ++i) {
    if (u < spec.tasks[i].share) return static_cast<int>(i);
    u -= spec.tasks[i].share;
  }
  return -1;
}

absl::StatusOr<std::vector<SimRequest>> ReadTrace(const WorkloadSpec& spec) {
  std::ifstream in(spec.trace_path);
  if (!in) return absl::NotFoundError(absl::StrCat("trace ", spec.trace_path, ": cannot open"));
  std::vector<SimRequest> requests;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    const absl::string_view row = absl::StripAsciiWhitespace(line);
    if (row.empty() || row[0] == '#' || (line_no == 1 && !absl::ascii_isdigit(row[0]))) continue;  // comment, header
    const std::vector<std::string> cells = absl::StrSplit(row, ',');
    const std::string where = absl::StrCat("trace ", spec.trace_path, " line ", line_no);
    double arrival_s = 0;
    SimRequest r;
    if (cells.size() < 3 || !absl::SimpleAtod(cells[0], &arrival_s) || !(arrival_s >= 0) ||
        !absl::SimpleAtoi(cells[1], &r.prompt_tokens) || r.prompt_tokens < 1 || !absl::SimpleAtoi(cells[2], &r.output_tokens) ||
        r.output_tokens < 1) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": want arrival_s >= 0, prompt_tokens >= 1, output_tokens >= 1[, task]"));
    }
    r.arrival = static_cast<Nanos>(std::llround(arrival_s * 1e9));
    if (cells.size() > 3 && !cells[3].empty()) {
      const std::string name(absl::StripAsciiWhitespace(cells[3]));
      for (size_t t = 0; t < spec.tasks.size(); ++t) {
        if (spec.tasks[t].name == name) r.task = static_cast<int>(t);
      }
      if (r.task < 0) return absl::InvalidArgumentError(absl::StrCat(where, ": task '", name, "' is not in the workload's tasks"));
    }
    requests.push_back(r);
  }
  std::stable_sort(requests.begin(), requests.end(), [](const SimRequest& a, const SimRequest& b) { return a.arrival < b.arrival; });
  return requests;
}

}  // namespace

absl::StatusOr<std::vector<SimRequest>> GenerateRequests(const WorkloadSpec& spec) {
  MOE_RETURN_IF_ERROR(spec.Validate());
  if (!spec.trace_path.empty()) return ReadTrace(spec);
  RandomStream rng(spec.seed, /*stream_id=*/7);
  std::vector<SimRequest> requests;
  const Nanos end = static_cast<Nanos>(spec.duration_s * 1e9);
  const double mean_gap_ns = spec.rate > 0 ? 1e9 / spec.rate : 0;
  auto uniform = [&](int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(rng.NextU64() % static_cast<uint64_t>(hi - lo + 1)); };
  const bool closed = spec.concurrency > 0;
  double t = closed ? 0 : rng.NextExponential(mean_gap_ns);
  for (int64_t i = 0; closed ? i < spec.requests : t < static_cast<double>(end); ++i) {
    SimRequest r;
    r.arrival = static_cast<Nanos>(t);
    if (!closed) t += rng.NextExponential(mean_gap_ns);
    r.prompt_tokens = uniform(spec.prompt_min, spec.prompt_max);
    r.output_tokens = uniform(spec.output_min, spec.output_max);
    r.task = PickTask(spec, rng.NextUniform());
    requests.push_back(r);
  }
  return requests;
}

}  // namespace moe::sim

namespace moe::sim {

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::StatusOr<SimulationInputs> LoadSimulationInputs(const std::string& model_path, const std::string& workload_path,
                                                      double bytes_per_weight, double activation_bytes) {
  SimulationInputs in;
  const bool is_file = model_path.size() >= 5 && model_path.substr(model_path.size() - 5) == ".json";
  const std::string config_path = is_file ? model_path : model_path + "/config.json";
  MOE_ASSIGN_OR_RETURN(in.config, ModelConfig::FromFile(config_path));
  std::string name = is_file ? model_path.substr(0, model_path.size() - 5) : model_path;
  while (!name.empty() && name.back() == '/') name.pop_back();
  name = name.substr(name.find_last_of('/') + 1);
  in.shape = ModelShape::FromConfig(in.config, name, bytes_per_weight, activation_bytes);
  MOE_ASSIGN_OR_RETURN(std::string text, ReadTextFile(workload_path));
  MOE_ASSIGN_OR_RETURN(in.workload, WorkloadSpec::FromJson(text, workload_path));
  const std::string dir = workload_path.find('/') == std::string::npos ? "." : workload_path.substr(0, workload_path.find_last_of('/'));
  for (std::string* p : {&in.workload.trace_path, &in.workload.expert_load_path}) {
    if (!p->empty() && (*p)[0] != '/') *p = dir + "/" + *p;
  }
  if (!in.workload.expert_load_path.empty()) {
    MOE_ASSIGN_OR_RETURN(std::vector<std::vector<double>> load, ReadExpertLoadFile(in.workload.expert_load_path, in.config));
    MOE_ASSIGN_OR_RETURN(in.popularity, ExpertPopularity::FromLoad(in.shape, load));
  } else {
    in.popularity = ExpertPopularity::Zipf(in.shape, in.workload.zipf, in.workload.seed);
  }
  MOE_ASSIGN_OR_RETURN(in.requests, GenerateRequests(in.workload));
  return in;
}

}  // namespace moe::sim
