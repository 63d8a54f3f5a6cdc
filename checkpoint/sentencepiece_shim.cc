#include "checkpoint/sentencepiece_shim.h"

#include <sentencepiece_processor.h>

#include <string>
#include <vector>

namespace {
thread_local std::string g_error;
thread_local std::string g_text;

const char* Result(const sentencepiece::util::Status& s) {
  if (s.ok()) return nullptr;
  g_error = s.ToString();
  return g_error.c_str();
}
}  // namespace

extern "C" {

void* moe_sp_new() { return new sentencepiece::SentencePieceProcessor(); }
void moe_sp_delete(void* p) { delete static_cast<sentencepiece::SentencePieceProcessor*>(p); }

const char* moe_sp_load(void* p, const char* path) {
  return Result(static_cast<sentencepiece::SentencePieceProcessor*>(p)->Load(path));
}

const char* moe_sp_encode(void* p, const char* text, int text_len, int* ids, int capacity, int* count) {
  std::vector<int> out;
  auto s = static_cast<sentencepiece::SentencePieceProcessor*>(p)->Encode(std::string(text, static_cast<size_t>(text_len)), &out);
  if (!s.ok()) return Result(s);
  *count = static_cast<int>(out.size());
  for (int i = 0; i < *count && i < capacity; ++i) ids[i] = out[i];
  return nullptr;
}

const char* moe_sp_decode(void* p, const int* ids, int count, const char** text, int* len) {
  std::vector<int> in(ids, ids + count);
  auto s = static_cast<sentencepiece::SentencePieceProcessor*>(p)->Decode(in, &g_text);
  if (!s.ok()) return Result(s);
  *text = g_text.data();
  *len = static_cast<int>(g_text.size());
  return nullptr;
}

int moe_sp_piece_size(void* p) { return static_cast<sentencepiece::SentencePieceProcessor*>(p)->GetPieceSize(); }
int moe_sp_is_control(void* p, int id) { return static_cast<sentencepiece::SentencePieceProcessor*>(p)->IsControl(id); }

}  // extern "C"
