#include "checkpoint/tokenizer.h"

#include "absl/strings/str_cat.h"
#include "checkpoint/sentencepiece_shim.h"

namespace moe {

Tokenizer::Tokenizer() : sp_(std::make_unique<sp_shim::Processor>()) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  if (std::string error = t->sp_->Load(path); !error.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a SentencePiece model: ", error));
  }
  return t;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(absl::string_view text) const {
  std::vector<int> ids;
  if (std::string error = sp_->Encode(std::string(text), &ids); !error.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer: ", error));
  }
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string Tokenizer::Decode(std::span<const int32_t> ids) const {
  std::vector<int> valid;
  valid.reserve(ids.size());
  const int n = sp_->PieceSize();
  for (int32_t id : ids) {
    if (id >= 0 && id < n && !sp_->IsControl(id)) valid.push_back(id);
  }
  std::string text;
  if (!sp_->Decode(valid, &text).empty()) return "";
  return text;
}

int Tokenizer::vocab_size() const { return sp_->PieceSize(); }

absl::Status Tokenizer::Train(const std::string& corpus_file, const std::string& model_prefix, int vocab_size) {
  const std::string args = absl::StrCat(
      "--input=", corpus_file, " --model_prefix=", model_prefix, " --vocab_size=", vocab_size,
      " --model_type=bpe --byte_fallback=true --character_coverage=1.0 --hard_vocab_limit=false",
      " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --minloglevel=2 --num_threads=1 --split_digits=true");
  if (std::string error = sp_shim::Train(args); !error.empty()) {
    return absl::InternalError(absl::StrCat("tokenizer training failed: ", error));
  }
  return absl::OkStatus();
}

}  // namespace moe
