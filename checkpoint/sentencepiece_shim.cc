#include "checkpoint/sentencepiece_shim.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

namespace moe::sp_shim {

struct Processor::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

Processor::Processor() : impl_(std::make_unique<Impl>()) {}
Processor::~Processor() = default;

std::string Processor::Load(const std::string& path) {
  auto s = impl_->sp.Load(path);
  return s.ok() ? "" : s.ToString();
}

std::string Processor::Encode(const std::string& text, std::vector<int>* ids) const {
  auto s = impl_->sp.Encode(text, ids);
  return s.ok() ? "" : s.ToString();
}

std::string Processor::Decode(const std::vector<int>& ids, std::string* text) const {
  auto s = impl_->sp.Decode(ids, text);
  return s.ok() ? "" : s.ToString();
}

int Processor::PieceSize() const { return impl_->sp.GetPieceSize(); }
bool Processor::IsControl(int id) const { return impl_->sp.IsControl(id); }

std::string Train(const std::string& args) {
  auto s = sentencepiece::SentencePieceTrainer::Train(args);
  return s.ok() ? "" : s.ToString();
}

}  // namespace moe::sp_shim
