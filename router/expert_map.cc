#include "router/expert_map.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/safetensors_writer.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

using Json = nlohmann::json;

std::string MergedTensor(int64_t layer, int64_t merged, const char* projection) {
  return absl::StrCat("layers.", layer, ".merged.", merged, ".", projection, ".weight");
}

std::vector<float> ReadFloats(const TensorView& t) {
  std::vector<float> v(static_cast<size_t>(t.num_elements()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = LoadAsFloat(t.data, t.dtype, i);
  return v;
}

absl::Status Invalid(const ExpertMap& map, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("expert map '", map.name, "': ", what));
}

}  // namespace

absl::StatusOr<ExpertFfn> ReadExpertFfn(const ModelSource& source, int64_t layer, int64_t expert) {
  const ModelConfig& c = source.config();
  ExpertFfn f{c.expert_ffn_size, c.hidden_size, {}, {}, {}};
  MOE_ASSIGN_OR_RETURN(TensorView gate, source.Tensor(c.ExpertTensor(layer, expert, FfnProjection::kGate), {f.ffn, f.hidden}));
  MOE_ASSIGN_OR_RETURN(TensorView up, source.Tensor(c.ExpertTensor(layer, expert, FfnProjection::kUp), {f.ffn, f.hidden}));
  MOE_ASSIGN_OR_RETURN(TensorView down, source.Tensor(c.ExpertTensor(layer, expert, FfnProjection::kDown), {f.hidden, f.ffn}));
  f.gate = ReadFloats(gate);
  f.up = ReadFloats(up);
  f.down = ReadFloats(down);
  return f;
}

int64_t ExpertMap::ReachableExperts(int64_t layer) const {
  for (const LayerExpertMap& lm : layers) {
    if (lm.layer != layer) continue;
    std::set<int32_t> distinct;
    for (int32_t t : lm.slot_to_expert) {
      if (t != kNoExpert) distinct.insert(t);
    }
    return static_cast<int64_t>(distinct.size());
  }
  return model.num_experts;
}

double ExpertMap::MeanReachableExperts() const {
  if (layers.empty()) return 0;
  double sum = 0;
  for (const LayerExpertMap& lm : layers) sum += static_cast<double>(ReachableExperts(lm.layer));
  return sum / static_cast<double>(layers.size());
}

double ExpertMap::MeanExpertsPerToken() const {
  double sum = 0;
  int64_t measured = 0;
  for (const LayerExpertMap& lm : layers) {
    if (lm.experts_per_token <= 0) continue;
    sum += lm.experts_per_token;
    ++measured;
  }
  return measured > 0 ? sum / static_cast<double>(measured) : 0;
}

absl::Status ValidateExpertMap(const ExpertMap& map, const ModelIdentity& model, int64_t top_k) {
  MOE_RETURN_IF_ERROR(CheckSameModel(map.model, model, absl::StrCat("expert map '", map.name, "'")));
  if (map.name.empty()) return Invalid(map, "has no name");
  if (map.layers.empty()) return Invalid(map, "has no layers");
  const int64_t e_count = model.num_experts;
  int64_t previous = -1;
  for (const LayerExpertMap& lm : map.layers) {
    const std::string where = absl::StrCat("layer ", lm.layer);
    if (lm.layer <= previous || lm.layer >= model.num_layers) return Invalid(map, absl::StrCat(where, ": out of order or range"));
    previous = lm.layer;
    if (static_cast<int64_t>(lm.slot_to_expert.size()) != e_count) {
      return Invalid(map, absl::StrCat(where, ": slot_to_expert has ", lm.slot_to_expert.size(), " entries, the model has ",
                                       e_count, " experts"));
    }
    const int64_t merged = static_cast<int64_t>(lm.merged.size());
    std::vector<bool> merged_used(static_cast<size_t>(merged), false);
    int64_t live = 0;
    for (int64_t s = 0; s < e_count; ++s) {
      const int32_t t = lm.slot_to_expert[s];
      if (t == kNoExpert) continue;
      if (t < 0 || t >= e_count + merged) {
        return Invalid(map, absl::StrCat(where, ": slot ", s, " targets expert ", t, ", outside [0, ", e_count + merged, ")"));
      }
      if (t >= e_count) merged_used[t - e_count] = true;
      ++live;
    }
    if (live < top_k) return Invalid(map, absl::StrCat(where, ": ", live, " live gate slots, fewer than top-k ", top_k));
    if (lm.experts_per_token != 0 && !(lm.experts_per_token >= 1 && lm.experts_per_token <= static_cast<double>(top_k))) {
      return Invalid(map, absl::StrCat(where, ": experts_per_token ", lm.experts_per_token, " is outside [1, top-k ", top_k, "]"));
    }
    for (int64_t m = 0; m < merged; ++m) {
      const MergedExpert& me = lm.merged[m];
      if (!merged_used[m]) return Invalid(map, absl::StrCat(where, ": merged expert ", m, " is not the target of any slot"));
      if (me.members.empty() || me.members.size() != me.usage.size()) {
        return Invalid(map, absl::StrCat(where, ": merged expert ", m, " needs members and their usage"));
      }
      const ExpertFfn& w = me.weights;
      if (!w.gate.empty() || !w.up.empty() || !w.down.empty()) {
        const size_t n = static_cast<size_t>(model.expert_ffn_size * model.hidden_size);
        if (w.ffn != model.expert_ffn_size || w.hidden != model.hidden_size || w.gate.size() != n || w.up.size() != n ||
            w.down.size() != n) {
          return Invalid(map, absl::StrCat(where, ": merged expert ", m, " has weights of shape [", w.ffn, ", ", w.hidden,
                                           "], the model's experts are [", model.expert_ffn_size, ", ", model.hidden_size, "]"));
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::Status WriteExpertMap(const ExpertMap& map, const std::string& dir, DType dtype) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  Json manifest = {{"format", kExpertMapFormat}, {"name", map.name}, {"task", map.task}, {"method", map.method},
                   {"experts_kept", map.experts_kept}, {"pruning_factor", map.pruning_factor}};
  manifest["model"] = ModelIdentityToJson(map.model);
  Json layers = Json::array();
  std::vector<TensorSpec> specs;
  std::vector<const std::vector<float>*> sources;
  for (const LayerExpertMap& lm : map.layers) {
    Json merged = Json::array();
    for (size_t m = 0; m < lm.merged.size(); ++m) {
      const MergedExpert& me = lm.merged[m];
      merged.push_back({{"members", me.members}, {"usage", me.usage}});
      const ExpertFfn& w = me.weights;
      specs.push_back({MergedTensor(lm.layer, static_cast<int64_t>(m), "w1"), dtype, {w.ffn, w.hidden}});
      sources.push_back(&w.gate);
      specs.push_back({MergedTensor(lm.layer, static_cast<int64_t>(m), "w3"), dtype, {w.ffn, w.hidden}});
      sources.push_back(&w.up);
      specs.push_back({MergedTensor(lm.layer, static_cast<int64_t>(m), "w2"), dtype, {w.hidden, w.ffn}});
      sources.push_back(&w.down);
    }
    Json layer = {{"layer", lm.layer}, {"slot_to_expert", lm.slot_to_expert}, {"merged", merged}};
    if (lm.experts_per_token > 0) layer["experts_per_token"] = lm.experts_per_token;
    layers.push_back(std::move(layer));
  }
  manifest["layers"] = layers;
  std::ofstream out(std::filesystem::path(dir) / "manifest.json");
  out << manifest.dump(1) << "\n";
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", dir, "/manifest.json"));
  return WriteSafetensors((std::filesystem::path(dir) / "experts.safetensors").string(), specs,
                          [&](size_t i, std::vector<float>* values) { *values = *sources[i]; },
                          {{"format", kExpertMapFormat}, {"name", map.name}});
}

absl::StatusOr<ExpertMap> ReadExpertMap(const std::string& dir, bool with_weights) {
  const std::string manifest_path = (std::filesystem::path(dir) / "manifest.json").string();
  std::ifstream in(manifest_path);
  if (!in) return absl::NotFoundError(absl::StrCat("no expert map at ", dir, " (cannot read manifest.json)"));
  std::stringstream text;
  text << in.rdbuf();
  ExpertMap map;
  try {
    const Json j = Json::parse(text.str());
    if (j.value("format", "") != kExpertMapFormat) {
      return absl::InvalidArgumentError(absl::StrCat(manifest_path, ": format is not ", kExpertMapFormat));
    }
    map.name = j.at("name").get<std::string>();
    map.task = j.value("task", "");
    map.method = j.value("method", "");
    map.experts_kept = j.value("experts_kept", int64_t{0});
    map.pruning_factor = j.value("pruning_factor", 1.0);
    map.model = ModelIdentityFromJson(j.at("model"));
    for (const Json& l : j.at("layers")) {
      LayerExpertMap lm;
      lm.layer = l.at("layer").get<int64_t>();
      lm.slot_to_expert = l.at("slot_to_expert").get<std::vector<int32_t>>();
      lm.experts_per_token = l.value("experts_per_token", 0.0);
      for (const Json& me : l.at("merged")) {
        lm.merged.push_back({me.at("members").get<std::vector<int32_t>>(), me.at("usage").get<std::vector<int64_t>>(), {}});
      }
      map.layers.push_back(std::move(lm));
    }
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(manifest_path, ": ", e.what()));
  }
  if (!with_weights) return map;
  const std::string weights_path = (std::filesystem::path(dir) / "experts.safetensors").string();
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(weights_path));
  for (LayerExpertMap& lm : map.layers) {
    for (size_t m = 0; m < lm.merged.size(); ++m) {
      ExpertFfn& w = lm.merged[m].weights;
      w.ffn = map.model.expert_ffn_size;
      w.hidden = map.model.hidden_size;
      const struct { const char* name; std::vector<float>* dst; std::vector<int64_t> shape; } parts[] = {
          {"w1", &w.gate, {w.ffn, w.hidden}}, {"w3", &w.up, {w.ffn, w.hidden}}, {"w2", &w.down, {w.hidden, w.ffn}}};
      for (const auto& part : parts) {
        const std::string name = MergedTensor(lm.layer, static_cast<int64_t>(m), part.name);
        auto t = file->Get(name);
        if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(weights_path, ": ", t.status().message()));
        if (t->shape != part.shape) {
          return absl::InvalidArgumentError(absl::StrCat(weights_path, ": ", name, " has the wrong shape for a ",
                                                         w.ffn, "x", w.hidden, " expert"));
        }
        *part.dst = ReadFloats(*t);
      }
    }
  }
  return map;
}

std::vector<std::vector<int32_t>> MergedExpertBaseIds(std::span<const ExpertMap> maps,
                                                      const ModelConfig& config) {
  std::vector<int32_t> next(static_cast<size_t>(config.num_layers), static_cast<int32_t>(config.num_experts));
  std::vector<std::vector<int32_t>> base;
  for (const ExpertMap& map : maps) {
    base.push_back(next);
    for (const LayerExpertMap& lm : map.layers) next[lm.layer] += static_cast<int32_t>(lm.merged.size());
  }
  return base;
}

SlotRouting ResolveSlotRouting(const ExpertMap& map, const std::vector<int32_t>& base_ids, const ModelConfig& config) {
  SlotRouting routing;
  routing.targets.resize(static_cast<size_t>(config.num_layers));
  for (const LayerExpertMap& lm : map.layers) {
    auto& targets = routing.targets[lm.layer];
    for (int32_t t : lm.slot_to_expert) {
      targets.push_back(t == kNoExpert || t < config.num_experts ? t : base_ids[lm.layer] + (t - static_cast<int32_t>(config.num_experts)));
    }
  }
  return routing;
}

void InstallMergedExperts(const ExpertMap& map, const std::vector<int32_t>& base_ids, ModelWeights* weights,
                          const std::function<bool(int64_t, int64_t)>& owns) {
  for (const LayerExpertMap& lm : map.layers) {
    MoeWeights& moe = weights->layers[lm.layer].moe;
    const DType storage = moe.router.storage();
    for (size_t m = 0; m < lm.merged.size(); ++m) {
      const int64_t id = base_ids[lm.layer] + static_cast<int64_t>(m);
      if (static_cast<int64_t>(moe.experts.size()) <= id) moe.experts.resize(static_cast<size_t>(id) + 1);
      if (owns && !owns(lm.layer, id)) continue;
      const ExpertFfn& w = lm.merged[m].weights;
      const MatrixView gate_up[] = {{w.gate.data(), DType::kF32, w.ffn, w.hidden}, {w.up.data(), DType::kF32, w.ffn, w.hidden}};
      FfnWeights& f = moe.experts[id];
      f.gate_up = PackedMatrix::Pack(gate_up, storage);
      f.down = PackedMatrix::Pack(MatrixView{w.down.data(), DType::kF32, w.hidden, w.ffn}, storage);
    }
  }
}

void RemoveMergedExperts(ModelWeights* weights) {
  for (LayerWeights& lw : weights->layers) {
    if (lw.is_moe) lw.moe.experts.resize(static_cast<size_t>(weights->config().num_experts));
  }
}

}  // namespace moe
