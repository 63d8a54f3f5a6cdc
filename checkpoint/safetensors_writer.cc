#include "checkpoint/safetensors_writer.h"

#include <cstdio>
#include <memory>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace moe {

int64_t TensorSpec::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorSpec>& specs,
                              const std::function<void(size_t, std::vector<float>*)>& fill,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorSpec& s : specs) {
    const uint64_t bytes = static_cast<uint64_t>(s.num_elements()) * DTypeSize(s.dtype);
    header[s.name] = {{"dtype", DTypeName(s.dtype)}, {"shape", s.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');  // keep the data section 8-byte aligned

  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!f) return absl::InternalError(absl::StrCat(path, ": cannot create"));
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  bool ok = std::fwrite(len, 1, 8, f.get()) == 8 && std::fwrite(text.data(), 1, text.size(), f.get()) == text.size();
  std::vector<float> values;
  std::vector<uint16_t> half;
  for (size_t i = 0; ok && i < specs.size(); ++i) {
    values.clear();
    fill(i, &values);
    if (static_cast<int64_t>(values.size()) != specs[i].num_elements()) {
      return absl::InternalError(absl::StrCat(path, ": fill produced ", values.size(), " values for '", specs[i].name,
                                              "', expected ", specs[i].num_elements()));
    }
    if (specs[i].dtype == DType::kF32) {
      ok = std::fwrite(values.data(), sizeof(float), values.size(), f.get()) == values.size();
    } else {
      half.resize(values.size());
      for (size_t k = 0; k < values.size(); ++k) {
        half[k] = specs[i].dtype == DType::kBF16 ? FloatToBf16(values[k]) : FloatToF16(values[k]);
      }
      ok = std::fwrite(half.data(), sizeof(uint16_t), half.size(), f.get()) == half.size();
    }
  }
  if (!ok || std::fflush(f.get()) != 0) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace moe
