#include "checkpoint/tokenizer.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <cstring>
#include <mutex>

extern char** environ;

#include "absl/strings/str_cat.h"

namespace moe {
namespace {

// The shim's entry points, resolved once (see sentencepiece_shim.h for why it is dlopened).
struct ShimApi {
  void* (*make)() = nullptr;
  void (*destroy)(void*) = nullptr;
  const char* (*load)(void*, const char*) = nullptr;
  const char* (*encode)(void*, const char*, int, int*, int, int*) = nullptr;
  const char* (*decode)(void*, const int*, int, const char**, int*) = nullptr;
  int (*piece_size)(void*) = nullptr;
  int (*is_control)(void*, int) = nullptr;
  std::string error;
};

std::string ShimPath() {
  if (const char* env = std::getenv("MOE_SP_SHIM")) return env;
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const auto beside = exe.parent_path().parent_path() / "lib" / "libmoe_sp_shim.so";
    if (std::filesystem::exists(beside)) return beside.string();
  }
  return MOE_SP_SHIM_BUILD_PATH;
}

const ShimApi& Shim() {
  static const ShimApi api = [] {
    ShimApi a;
    const std::string path = ShimPath();
    int flags = RTLD_NOW | RTLD_LOCAL;
#if !defined(__SANITIZE_ADDRESS__)
    // Bind sentencepiece to its own bundled protobuf and absl. (It must then never write to
    // std::cout/cerr, which live copy-relocated in the executable: the shim only loads, encodes and
    // decodes, and training runs in the spm_train process.) AddressSanitizer refuses DEEPBIND.
    flags |= RTLD_DEEPBIND;
#endif
    void* h = dlopen(path.c_str(), flags);
    if (h == nullptr) {
      a.error = absl::StrCat("cannot load the sentencepiece shim ", path, ": ", dlerror());
      return a;
    }
    a.make = reinterpret_cast<void* (*)()>(dlsym(h, "moe_sp_new"));
    a.destroy = reinterpret_cast<void (*)(void*)>(dlsym(h, "moe_sp_delete"));
    a.load = reinterpret_cast<const char* (*)(void*, const char*)>(dlsym(h, "moe_sp_load"));
    a.encode = reinterpret_cast<const char* (*)(void*, const char*, int, int*, int, int*)>(dlsym(h, "moe_sp_encode"));
    a.decode = reinterpret_cast<const char* (*)(void*, const int*, int, const char**, int*)>(dlsym(h, "moe_sp_decode"));
    a.piece_size = reinterpret_cast<int (*)(void*)>(dlsym(h, "moe_sp_piece_size"));
    a.is_control = reinterpret_cast<int (*)(void*, int)>(dlsym(h, "moe_sp_is_control"));
    if (!a.make || !a.destroy || !a.load || !a.encode || !a.decode || !a.piece_size || !a.is_control) {
      a.error = absl::StrCat(path, ": missing sentencepiece shim symbols");
    }
    return a;
  }();
  return api;
}

}  // namespace

Tokenizer::~Tokenizer() {
  if (processor_ != nullptr) Shim().destroy(processor_);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  const ShimApi& shim = Shim();
  if (!shim.error.empty()) return absl::UnavailableError(shim.error);
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->processor_ = shim.make();
  if (const char* error = shim.load(t->processor_, path.c_str())) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a SentencePiece model: ", error));
  }
  return t;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(absl::string_view text) const {
  std::vector<int> ids(text.size() + 16);
  int count = 0;
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (const char* error = Shim().encode(processor_, text.data(), static_cast<int>(text.size()), ids.data(),
                                          static_cast<int>(ids.size()), &count)) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer: ", error));
    }
    if (count <= static_cast<int>(ids.size())) break;
    ids.resize(static_cast<size_t>(count));
  }
  return std::vector<int32_t>(ids.begin(), ids.begin() + count);
}

std::string Tokenizer::Decode(std::span<const int32_t> ids) const {
  std::vector<int> valid;
  valid.reserve(ids.size());
  const int n = vocab_size();
  for (int32_t id : ids) {
    if (id >= 0 && id < n && !Shim().is_control(processor_, id)) valid.push_back(id);
  }
  const char* text = nullptr;
  int len = 0;
  if (Shim().decode(processor_, valid.data(), static_cast<int>(valid.size()), &text, &len) != nullptr) return "";
  return std::string(text, static_cast<size_t>(len));
}

int Tokenizer::vocab_size() const { return Shim().piece_size(processor_); }

absl::Status Tokenizer::Train(const std::string& corpus_file, const std::string& model_prefix, int vocab_size) {
  // Debian's spm_train (package sentencepiece), in its own process: see the note in Shim().
  std::vector<std::string> args = {
      "spm_train", "--input=" + corpus_file, "--model_prefix=" + model_prefix,
      absl::StrCat("--vocab_size=", vocab_size), "--model_type=bpe", "--byte_fallback=true",
      "--character_coverage=1.0", "--hard_vocab_limit=false", "--unk_id=0", "--bos_id=1", "--eos_id=2",
      "--pad_id=-1", "--minloglevel=2", "--num_threads=1", "--split_digits=true"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, "spm_train", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return absl::UnavailableError("cannot run spm_train (Debian package sentencepiece): " + std::string(strerror(rc)));
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("spm_train failed on ", corpus_file));
  }
  return absl::OkStatus();
}

}  // namespace moe
