// A plain-C++ facade over libsentencepiece. Its headers declare their own `absl::string_view`, which
// clashes with Abseil's, so they are included only by sentencepiece_shim.cc, which includes no Abseil.
#ifndef MOE_CHECKPOINT_SENTENCEPIECE_SHIM_H_
#define MOE_CHECKPOINT_SENTENCEPIECE_SHIM_H_

#include <memory>
#include <string>
#include <vector>

namespace moe::sp_shim {

class Processor {
 public:
  Processor();
  ~Processor();
  // Each returns an empty string on success, else the library's error text.
  std::string Load(const std::string& path);
  std::string Encode(const std::string& text, std::vector<int>* ids) const;
  std::string Decode(const std::vector<int>& ids, std::string* text) const;
  int PieceSize() const;
  bool IsControl(int id) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string Train(const std::string& args);

}  // namespace moe::sp_shim

#endif  // MOE_CHECKPOINT_SENTENCEPIECE_SHIM_H_
