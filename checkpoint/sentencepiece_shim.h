// A C ABI over libsentencepiece, built as its own shared library and loaded with dlopen.
//
// Why: Debian's libsentencepiece bundles its own copy of protobuf-lite (3.14) and exports it; in a
// process that also links libprotobuf (3.21, every gRPC binary here) the two collide at start-up.
// tokenizer.cc therefore dlopens libmoe_sp_shim.so with RTLD_LOCAL | RTLD_DEEPBIND, so sentencepiece
// binds to its own copy and nothing else sees it. Training runs Debian's spm_train in its own process. Its headers also declare their own
// `absl::string_view`, so only sentencepiece_shim.cc includes them.
#ifndef MOE_CHECKPOINT_SENTENCEPIECE_SHIM_H_
#define MOE_CHECKPOINT_SENTENCEPIECE_SHIM_H_

extern "C" {

// Every function returning const char* returns nullptr on success, else an error text owned by the
// shim (valid until the next call on the same thread).
void* moe_sp_new();
void moe_sp_delete(void* processor);
const char* moe_sp_load(void* processor, const char* path);
// Writes up to `capacity` ids; *count receives the full number (call again with more room if larger).
const char* moe_sp_encode(void* processor, const char* text, int text_len, int* ids, int capacity, int* count);
// Writes the text into a shim-owned buffer returned through *text / *len.
const char* moe_sp_decode(void* processor, const int* ids, int count, const char** text, int* len);
int moe_sp_piece_size(void* processor);
int moe_sp_is_control(void* processor, int id);

}  // extern "C"

#endif  // MOE_CHECKPOINT_SENTENCEPIECE_SHIM_H_
