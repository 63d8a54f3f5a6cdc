// Reading the simulator's JSON configs (cluster, workload) with errors that name the field. Every
// getter takes the field's default (used when the field is absent) and its allowed range; the first
// error is kept and returned by status().
#ifndef MOE_SIMULATION_JSON_FIELDS_H_
#define MOE_SIMULATION_JSON_FIELDS_H_

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace moe::sim {

class JsonFields {
 public:
  // `where` prefixes every error, e.g. "workload.json".
  JsonFields(const nlohmann::json& object, std::string where) : j_(object), where_(std::move(where)) {
    if (!j_.is_object()) Fail("", "must be a JSON object");
  }

  double Number(const std::string& key, double fallback, double min = -std::numeric_limits<double>::infinity(),
                double max = std::numeric_limits<double>::infinity()) {
    if (!j_.is_object() || !j_.contains(key)) return fallback;
    const auto& v = j_[key];
    if (!v.is_number() || !(v.get<double>() >= min && v.get<double>() <= max)) {
      Fail(key, absl::StrCat("must be a number in [", min, ", ", max, "]"));
      return fallback;
    }
    return v.get<double>();
  }
  int64_t Int(const std::string& key, int64_t fallback, int64_t min = std::numeric_limits<int64_t>::min(),
              int64_t max = std::numeric_limits<int64_t>::max()) {
    if (!j_.is_object() || !j_.contains(key)) return fallback;
    const auto& v = j_[key];
    if (!v.is_number_integer() || v.get<int64_t>() < min || v.get<int64_t>() > max) {
      Fail(key, absl::StrCat("must be an integer in [", min, ", ", max, "]"));
      return fallback;
    }
    return v.get<int64_t>();
  }
  std::string String(const std::string& key, const std::string& fallback) {
    if (!j_.is_object() || !j_.contains(key)) return fallback;
    if (!j_[key].is_string()) {
      Fail(key, "must be a string");
      return fallback;
    }
    return j_[key].get<std::string>();
  }
  bool Bool(const std::string& key, bool fallback) {
    if (!j_.is_object() || !j_.contains(key)) return fallback;
    if (!j_[key].is_boolean()) {
      Fail(key, "must be true or false");
      return fallback;
    }
    return j_[key].get<bool>();
  }
  // A curve: [[x, y], ...] with integer x >= min_x strictly ascending and number y >= 0. Empty when absent.
  std::vector<std::pair<int64_t, double>> Curve(const std::string& key, int64_t min_x) {
    std::vector<std::pair<int64_t, double>> points;
    if (!j_.is_object() || !j_.contains(key)) return points;
    const auto& v = j_[key];
    for (size_t i = 0; v.is_array() && i < v.size(); ++i) {
      const auto& p = v[i];
      if (!p.is_array() || p.size() != 2 || !p[0].is_number_integer() || !p[1].is_number() ||
          p[0].get<int64_t>() < min_x || !(p[1].get<double>() >= 0) ||
          (!points.empty() && p[0].get<int64_t>() <= points.back().first)) {
        Fail(absl::StrCat(key, "[", i, "]"), absl::StrCat("must be [x, y]: an integer x >= ", min_x,
                                                         " above the previous point's, and a number y >= 0"));
        return {};
      }
      points.emplace_back(p[0].get<int64_t>(), p[1].get<double>());
    }
    if (!v.is_array() || points.empty()) Fail(key, "must be a non-empty list of [x, y] points");
    return points;
  }
  // The field's JSON (null when absent), for nested objects and arrays.
  const nlohmann::json& Raw(const std::string& key) const {
    static const nlohmann::json kNull;
    return j_.is_object() && j_.contains(key) ? j_[key] : kNull;
  }

  void Fail(const std::string& key, const std::string& why) {
    if (status_.ok()) status_ = absl::InvalidArgumentError(absl::StrCat(where_, key.empty() ? "" : ".", key, " ", why));
  }
  const absl::Status& status() const { return status_; }
  const std::string& where() const { return where_; }

 private:
  const nlohmann::json& j_;
  std::string where_;
  absl::Status status_;
};

}  // namespace moe::sim

#endif  // MOE_SIMULATION_JSON_FIELDS_H_
