// Text <-> token ids through a SentencePiece model (Mixtral's tokenizer.model format).
#ifndef MOE_CHECKPOINT_TOKENIZER_H_
#define MOE_CHECKPOINT_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe {

class Tokenizer {
 public:
  // INVALID_ARGUMENT naming the file when it is not a SentencePiece model; UNAVAILABLE when the
  // sentencepiece shim library cannot be loaded.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  ~Tokenizer();

  // Token ids of `text` without BOS/EOS (the caller adds BOS as the model's config says).
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text) const;
  // Text of `ids`; ids outside the tokenizer's vocabulary and control tokens decode to nothing.
  std::string Decode(std::span<const int32_t> ids) const;
  int vocab_size() const;

  // Trains a byte-fallback BPE model on `corpus_file`, writing <model_prefix>.model (runs spm_train).
  static absl::Status Train(const std::string& corpus_file, const std::string& model_prefix, int vocab_size);

 private:
  Tokenizer() = default;
  void* processor_ = nullptr;
};

}  // namespace moe

#endif  // MOE_CHECKPOINT_TOKENIZER_H_
