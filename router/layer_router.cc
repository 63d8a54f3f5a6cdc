#include "router/layer_router.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/safetensors_writer.h"
#include "common/splitmix.h"
#include "common/status.h"
#include "kernels/kernels.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

using Json = nlohmann::json;
constexpr float kNormEps = 1e-6f;

std::string RouterTensor(int64_t layer, const char* part) { return absl::StrCat("layers.", layer, ".", part); }

float Gelu(float a) { return 0.5f * a * (1.0f + std::erf(a * static_cast<float>(M_SQRT1_2))); }
float GeluDerivative(float a) {
  const float cdf = 0.5f * (1.0f + std::erf(a * static_cast<float>(M_SQRT1_2)));
  const float pdf = std::exp(-0.5f * a * a) * static_cast<float>(0.5 * M_2_SQRTPI * M_SQRT1_2);
  return cdf + a * pdf;
}

// Hidden activations of one window: a = fc1 x + b1 (pre-GELU).
void Fc1(const RouterMlp& mlp, const float* x, int64_t d, float* a) {
  for (int64_t j = 0; j < kRouterBottleneck; ++j) a[j] = mlp.fc1_bias[j] + Dot(mlp.fc1_weight.data() + j * d, x, d);
}

// Adam over one flat parameter vector.
struct AdamState {
  std::vector<float> m, v;
  void Step(std::vector<float>* params, const std::vector<float>& grad, float lr, int64_t t) {
    constexpr float kBeta1 = 0.9f, kBeta2 = 0.999f, kEps = 1e-8f;
    if (m.empty()) m.assign(params->size(), 0.0f), v.assign(params->size(), 0.0f);
    const float c1 = 1.0f - std::pow(kBeta1, static_cast<float>(t));
    const float c2 = 1.0f - std::pow(kBeta2, static_cast<float>(t));
    for (size_t i = 0; i < params->size(); ++i) {
      m[i] = kBeta1 * m[i] + (1 - kBeta1) * grad[i];
      v[i] = kBeta2 * v[i] + (1 - kBeta2) * grad[i] * grad[i];
      (*params)[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + kEps);
    }
  }
};

// Gradients of one layer's MLP, same shapes as RouterMlp.
struct MlpGrad {
  std::vector<float> fc1_weight, fc1_bias, fc2_weight, fc2_bias;
  explicit MlpGrad(int64_t d)
      : fc1_weight(static_cast<size_t>(kRouterBottleneck * d)),
        fc1_bias(static_cast<size_t>(kRouterBottleneck)),
        fc2_weight(static_cast<size_t>(kRouterClasses * kRouterBottleneck)),
        fc2_bias(static_cast<size_t>(kRouterClasses)) {}
  void Zero() {
    for (auto* v : {&fc1_weight, &fc1_bias, &fc2_weight, &fc2_bias}) std::fill(v->begin(), v->end(), 0.0f);
  }
};

// Logits of one MLP over pooled windows [n, d], averaged over the windows; keeps each window's fc1
// output before (pre) and after (act) GELU, [n, kRouterBottleneck], for the backward pass.
ClassScores ForwardWindows(const RouterMlp& mlp, std::span<const float> windows, int64_t d, std::vector<float>* pre,
                           std::vector<float>* act) {
  const int64_t n = static_cast<int64_t>(windows.size()) / d;
  pre->resize(static_cast<size_t>(n * kRouterBottleneck));
  act->resize(pre->size());
  ClassScores logits{};
  for (int64_t w = 0; w < n; ++w) {
    float* a = pre->data() + w * kRouterBottleneck;
    Fc1(mlp, windows.data() + w * d, d, a);
    float* g = act->data() + w * kRouterBottleneck;
    for (int64_t j = 0; j < kRouterBottleneck; ++j) g[j] = Gelu(a[j]);
    for (int64_t c = 0; c < kRouterClasses; ++c) {
      logits[c] += (mlp.fc2_bias[c] + Dot(mlp.fc2_weight.data() + c * kRouterBottleneck, g, kRouterBottleneck)) / n;
    }
  }
  return logits;
}

// Adds the gradient of alpha-weighted focal loss for one example into `grad`.
void Backprop(const RouterMlp& mlp, const RouterExample& ex, int64_t d, float alpha, float gamma, MlpGrad* grad) {
  const int64_t windows = static_cast<int64_t>(ex.windows.size()) / d;
  std::vector<float> pre, act;
  const ClassScores logits = ForwardWindows(mlp, ex.windows, d, &pre, &act);
  ClassScores dz;
  FocalLoss(logits, ex.label, alpha, gamma, &dz);
  std::vector<float> da(static_cast<size_t>(kRouterBottleneck));
  for (int64_t c = 0; c < kRouterClasses; ++c) grad->fc2_bias[c] += dz[c];
  for (int64_t w = 0; w < windows; ++w) {
    const float* g = act.data() + w * kRouterBottleneck;
    const float* a = pre.data() + w * kRouterBottleneck;
    std::fill(da.begin(), da.end(), 0.0f);
    for (int64_t c = 0; c < kRouterClasses; ++c) {
      const float dzw = dz[c] / windows;
      Axpy(dzw, g, grad->fc2_weight.data() + c * kRouterBottleneck, kRouterBottleneck);
      Axpy(dzw, mlp.fc2_weight.data() + c * kRouterBottleneck, da.data(), kRouterBottleneck);
    }
    const float* x = ex.windows.data() + w * d;
    for (int64_t j = 0; j < kRouterBottleneck; ++j) {
      const float daj = da[j] * GeluDerivative(a[j]);
      grad->fc1_bias[j] += daj;
      Axpy(daj, x, grad->fc1_weight.data() + j * d, d);
    }
  }
}

int Argmax(const ClassScores& s) { return static_cast<int>(std::max_element(s.begin(), s.end()) - s.begin()); }

}  // namespace

std::vector<float> PooledWindows(const float* hidden, int64_t rows, int64_t d) {
  const int64_t windows = std::min(rows, kRouterWindows);
  std::vector<float> out(static_cast<size_t>(windows * d), 0.0f);
  for (int64_t w = 0; w < windows; ++w) {
    const int64_t begin = rows * w / windows, end = rows * (w + 1) / windows;
    float* m = out.data() + w * d;
    for (int64_t r = begin; r < end; ++r) Axpy(1.0f, hidden + r * d, m, d);
    const float inv_count = 1.0f / static_cast<float>(end - begin);
    for (int64_t i = 0; i < d; ++i) m[i] *= inv_count;
    const float scale = 1.0f / std::sqrt(Dot(m, m, d) / static_cast<float>(d) + kNormEps);
    for (int64_t i = 0; i < d; ++i) m[i] *= scale;
  }
  return out;
}

ClassScores RouterLogits(const RouterMlp& mlp, std::span<const float> windows, int64_t d) {
  std::vector<float> pre, act;
  return ForwardWindows(mlp, windows, d, &pre, &act);
}

ClassScores Softmax3(const ClassScores& z) {
  const float m = std::max({z[0], z[1], z[2]});
  ClassScores p;
  float sum = 0;
  for (int c = 0; c < kRouterClasses; ++c) sum += p[c] = std::exp(z[c] - m);
  for (float& v : p) v /= sum;
  return p;
}

int DecideRuns(const ClassScores& p, double skip_threshold) {
  if (p[kSkipLayer] >= skip_threshold) return kSkipLayer;
  return p[kRepeatLayer] > p[kRunLayer] ? kRepeatLayer : kRunLayer;
}

ClassScores LayerRouter::Probabilities(int64_t layer, const float* hidden, int64_t rows) const {
  const int64_t d = model.hidden_size;
  return Softmax3(RouterLogits(layers[layer], PooledWindows(hidden, rows, d), d));
}

int LayerRoutingPolicy::Decide(int64_t layer, const float* hidden, int64_t rows) const {
  return DecideRuns(router_->Probabilities(layer, hidden, rows), skip_threshold_);
}

LayerRouter NewLayerRouter(std::string name, const ModelIdentity& model, uint64_t seed) {
  LayerRouter r;
  r.name = std::move(name);
  r.model = model;
  const int64_t d = model.hidden_size;
  SplitMix64 rng(seed);
  auto gaussian = [&rng](float std) {  // Box-Muller
    const double u1 = std::max(rng.NextUniform(), 1e-300), u2 = rng.NextUniform();
    return static_cast<float>(std * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
  };
  for (int64_t l = 0; l < model.num_layers; ++l) {
    RouterMlp mlp;
    mlp.fc1_weight.resize(static_cast<size_t>(kRouterBottleneck * d));
    for (float& w : mlp.fc1_weight) w = gaussian(1.0f / std::sqrt(static_cast<float>(d)));
    mlp.fc1_bias.assign(static_cast<size_t>(kRouterBottleneck), 0.0f);
    mlp.fc2_weight.resize(static_cast<size_t>(kRouterClasses * kRouterBottleneck));
    for (float& w : mlp.fc2_weight) w = gaussian(1.0f / std::sqrt(static_cast<float>(kRouterBottleneck)));
    mlp.fc2_bias.assign(static_cast<size_t>(kRouterClasses), 0.0f);
    r.layers.push_back(std::move(mlp));
  }
  r.info.resize(static_cast<size_t>(model.num_layers));
  return r;
}

float FocalLoss(const ClassScores& logits, int label, float alpha, float gamma, ClassScores* grad) {
  const ClassScores p = Softmax3(logits);
  const float py = std::clamp(p[label], 1e-12f, 1.0f - 1e-7f);
  const float one_minus = 1.0f - py;
  const float log_py = std::log(py);
  const float loss = -alpha * std::pow(one_minus, gamma) * log_py;
  if (grad != nullptr) {
    // dL/dz_j = -alpha [(1-p)^g - g p (1-p)^(g-1) log p] (delta_yj - p_j)
    const float factor = -alpha * (std::pow(one_minus, gamma) - gamma * py * std::pow(one_minus, gamma - 1.0f) * log_py);
    for (int c = 0; c < kRouterClasses; ++c) (*grad)[c] = factor * ((c == label ? 1.0f : 0.0f) - p[c]);
  }
  return loss;
}

absl::Status TrainLayerRouter(std::span<const RouterExample> examples, const RouterTrainOptions& options,
                              LayerRouter* router) {
  const int64_t d = router->model.hidden_size, num_layers = static_cast<int64_t>(router->layers.size());
  std::vector<std::vector<const RouterExample*>> by_layer(static_cast<size_t>(num_layers));
  for (const RouterExample& ex : examples) {
    if (ex.layer < 0 || ex.layer >= num_layers) return absl::InvalidArgumentError(absl::StrCat("router example for layer ", ex.layer));
    if (ex.label < kSkipLayer || ex.label > kRepeatLayer) return absl::InvalidArgumentError(absl::StrCat("router label ", ex.label));
    if (ex.windows.empty() || ex.windows.size() % static_cast<size_t>(d) != 0 ||
        ex.windows.size() > static_cast<size_t>(kRouterWindows * d)) {
      return absl::InvalidArgumentError(absl::StrCat("router example of ", ex.windows.size(), " values for hidden size ", d));
    }
    by_layer[ex.layer].push_back(&ex);
  }
  router->info.resize(static_cast<size_t>(num_layers));
  SplitMix64 rng(options.seed);
  for (int64_t l = 0; l < num_layers; ++l) {
    std::vector<const RouterExample*>& data = by_layer[l];
    LayerRouterLayerInfo& info = router->info[l];
    info = {};
    if (data.empty()) continue;
    for (const RouterExample* ex : data) ++info.labels[ex->label];
    const int64_t present = std::count_if(info.labels.begin(), info.labels.end(), [](int64_t n) { return n > 0; });
    for (int c = 0; c < kRouterClasses; ++c) {
      info.class_weights[c] = info.labels[c] > 0 ? static_cast<float>(data.size()) / static_cast<float>(present * info.labels[c]) : 0.0f;
    }
    RouterMlp& mlp = router->layers[l];
    MlpGrad grad(d);
    AdamState adam[4];
    int64_t step = 0;
    std::vector<size_t> order(data.size());
    std::iota(order.begin(), order.end(), 0);
    for (int64_t epoch = 0; epoch < options.epochs; ++epoch) {
      for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.Next() % i]);
      for (size_t first = 0; first < order.size(); first += static_cast<size_t>(options.batch_size)) {
        const size_t end = std::min(order.size(), first + static_cast<size_t>(options.batch_size));
        grad.Zero();
        for (size_t i = first; i < end; ++i) {
          const RouterExample& ex = *data[order[i]];
          Backprop(mlp, ex, d, info.class_weights[ex.label], options.gamma, &grad);
        }
        const float inv = 1.0f / static_cast<float>(end - first);
        for (auto* g : {&grad.fc1_weight, &grad.fc1_bias, &grad.fc2_weight, &grad.fc2_bias}) {
          for (float& v : *g) v *= inv;
        }
        ++step;
        adam[0].Step(&mlp.fc1_weight, grad.fc1_weight, options.learning_rate, step);
        adam[1].Step(&mlp.fc1_bias, grad.fc1_bias, options.learning_rate, step);
        adam[2].Step(&mlp.fc2_weight, grad.fc2_weight, options.learning_rate, step);
        adam[3].Step(&mlp.fc2_bias, grad.fc2_bias, options.learning_rate, step);
      }
    }
    int64_t correct = 0;
    for (const RouterExample* ex : data) correct += Argmax(RouterLogits(mlp, ex->windows, d)) == ex->label;
    info.train_accuracy = static_cast<double>(correct) / static_cast<double>(data.size());
  }
  return absl::OkStatus();
}

absl::Status ValidateLayerRouter(const LayerRouter& router, const ModelIdentity& model) {
  const std::string what = absl::StrCat("layer router '", router.name, "'");
  MOE_RETURN_IF_ERROR(CheckSameModel(router.model, model, what));
  if (router.name.empty()) return absl::InvalidArgumentError("layer router has no name");
  if (!(router.skip_threshold >= 0.0 && router.skip_threshold <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": skip_threshold ", router.skip_threshold, " is outside [0, 1]"));
  }
  if (static_cast<int64_t>(router.layers.size()) != model.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has ", router.layers.size(), " layers; the model has ", model.num_layers));
  }
  const int64_t d = model.hidden_size;
  for (size_t l = 0; l < router.layers.size(); ++l) {
    const RouterMlp& m = router.layers[l];
    const struct { const char* name; const std::vector<float>* v; int64_t size; } parts[] = {
        {"fc1.weight", &m.fc1_weight, kRouterBottleneck * d}, {"fc1.bias", &m.fc1_bias, kRouterBottleneck},
        {"fc2.weight", &m.fc2_weight, kRouterClasses * kRouterBottleneck}, {"fc2.bias", &m.fc2_bias, kRouterClasses}};
    for (const auto& part : parts) {
      if (static_cast<int64_t>(part.v->size()) != part.size) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": layer ", l, " ", part.name, " has ", part.v->size(),
                                                       " values, expected ", part.size));
      }
      if (!std::all_of(part.v->begin(), part.v->end(), [](float x) { return std::isfinite(x); })) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": layer ", l, " ", part.name, " is not finite"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status WriteLayerRouter(const LayerRouter& router, const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  const int64_t d = router.model.hidden_size;
  Json manifest = {{"format", kLayerRouterFormat}, {"name", router.name}, {"tasks", router.tasks},
                   {"examples", router.examples}, {"skip_threshold", router.skip_threshold},
                   {"model", ModelIdentityToJson(router.model)}};
  Json layers = Json::array();
  std::vector<TensorSpec> specs;
  std::vector<const std::vector<float>*> sources;
  for (size_t l = 0; l < router.layers.size(); ++l) {
    const LayerRouterLayerInfo info = l < router.info.size() ? router.info[l] : LayerRouterLayerInfo{};
    layers.push_back({{"layer", l}, {"labels", info.labels}, {"class_weights", info.class_weights},
                      {"train_accuracy", info.train_accuracy}});
    const RouterMlp& m = router.layers[l];
    const int64_t layer = static_cast<int64_t>(l);
    specs.push_back({RouterTensor(layer, "fc1.weight"), DType::kF32, {kRouterBottleneck, d}});
    sources.push_back(&m.fc1_weight);
    specs.push_back({RouterTensor(layer, "fc1.bias"), DType::kF32, {kRouterBottleneck}});
    sources.push_back(&m.fc1_bias);
    specs.push_back({RouterTensor(layer, "fc2.weight"), DType::kF32, {kRouterClasses, kRouterBottleneck}});
    sources.push_back(&m.fc2_weight);
    specs.push_back({RouterTensor(layer, "fc2.bias"), DType::kF32, {kRouterClasses}});
    sources.push_back(&m.fc2_bias);
  }
  manifest["layers"] = layers;
  std::ofstream out(std::filesystem::path(dir) / "manifest.json");
  out << manifest.dump(1) << "\n";
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", dir, "/manifest.json"));
  return WriteSafetensors((std::filesystem::path(dir) / "routers.safetensors").string(), specs,
                          [&](size_t i, std::vector<float>* values) { *values = *sources[i]; },
                          {{"format", kLayerRouterFormat}, {"name", router.name}});
}

absl::StatusOr<LayerRouter> ReadLayerRouter(const std::string& dir) {
  const std::string manifest_path = (std::filesystem::path(dir) / "manifest.json").string();
  std::ifstream in(manifest_path);
  if (!in) return absl::NotFoundError(absl::StrCat("no layer router at ", dir, " (cannot read manifest.json)"));
  std::stringstream text;
  text << in.rdbuf();
  LayerRouter router;
  try {
    const Json j = Json::parse(text.str());
    if (j.value("format", "") != kLayerRouterFormat) {
      return absl::InvalidArgumentError(absl::StrCat(manifest_path, ": format is not ", kLayerRouterFormat));
    }
    router.name = j.at("name").get<std::string>();
    router.tasks = j.value("tasks", std::vector<std::string>{});
    router.examples = j.value("examples", int64_t{0});
    router.skip_threshold = j.value("skip_threshold", 0.5);
    router.model = ModelIdentityFromJson(j.at("model"));
    for (const Json& l : j.at("layers")) {
      LayerRouterLayerInfo info;
      info.labels = l.value("labels", std::array<int64_t, kRouterClasses>{});
      info.class_weights = l.value("class_weights", ClassScores{});
      info.train_accuracy = l.value("train_accuracy", 0.0);
      router.info.push_back(info);
    }
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(manifest_path, ": ", e.what()));
  }
  const std::string weights_path = (std::filesystem::path(dir) / "routers.safetensors").string();
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(weights_path));
  for (size_t l = 0; l < router.info.size(); ++l) {
    RouterMlp m;
    const int64_t layer = static_cast<int64_t>(l);
    const int64_t d = router.model.hidden_size;
    const struct { const char* name; std::vector<float>* dst; std::vector<int64_t> shape; } parts[] = {
        {"fc1.weight", &m.fc1_weight, {kRouterBottleneck, d}}, {"fc1.bias", &m.fc1_bias, {kRouterBottleneck}},
        {"fc2.weight", &m.fc2_weight, {kRouterClasses, kRouterBottleneck}}, {"fc2.bias", &m.fc2_bias, {kRouterClasses}}};
    for (const auto& [part, dst, shape] : parts) {
      auto t = file->Get(RouterTensor(layer, part));
      if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(weights_path, ": ", t.status().message()));
      if (t->shape != shape) {
        return absl::InvalidArgumentError(absl::StrCat(weights_path, ": ", RouterTensor(layer, part),
                                                       " has the wrong shape for hidden size ", d));
      }
      dst->resize(static_cast<size_t>(t->num_elements()));
      for (size_t i = 0; i < dst->size(); ++i) (*dst)[i] = LoadAsFloat(t->data, t->dtype, i);
    }
    router.layers.push_back(std::move(m));
  }
  return router;
}

}  // namespace moe
