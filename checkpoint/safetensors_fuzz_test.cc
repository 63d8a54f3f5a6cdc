// Feeds thousands of mutated safetensors headers to the parser: every one must produce a value or an
// error, never a crash (CI runs this binary under AddressSanitizer too).
#include <random>
#include <string>

#include "checkpoint/safetensors.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

std::string WithLength(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(static_cast<uint64_t>(header.size()) >> (8 * i));
  return out + header + std::string(data_bytes, '\x11');
}

TEST(SafetensorsFuzzTest, MutatedHeadersNeverCrash) {
  const std::string seed_header =
      R"({"__metadata__":{"format":"pt"},"model.embed_tokens.weight":{"dtype":"BF16","shape":[4,2],"data_offsets":[0,16]},)"
      R"("model.norm.weight":{"dtype":"F32","shape":[2],"data_offsets":[16,24]},"lm_head.weight":{"dtype":"F16","shape":[2,2],"data_offsets":[24,32]}})";
  const std::string seed = WithLength(seed_header, 32);
  const std::string tokens[] = {"{", "}", "[", "]", ",", ":", "\"", "-1", "0", "18446744073709551615", "1e308",
                                "null", "true", "\"F32\"", "\"shape\"", "\"data_offsets\"", "\\u0000", "\xff"};
  std::mt19937 rng(12345);
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string m = seed;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % m.size();
      switch (rng() % 5) {
        case 0: m[pos] = static_cast<char>(rng()); break;                       // flip a byte (length prefix too)
        case 1: m.erase(pos, 1 + rng() % 8); break;                              // delete
        case 2: m.insert(pos, tokens[rng() % std::size(tokens)]); break;         // insert a JSON token
        case 3: m.resize(rng() % (m.size() + 1)); break;                         // truncate
        case 4: if (pos >= 8) m[pos] = static_cast<char>('0' + rng() % 10); break;  // change a digit
      }
      if (m.empty()) m = "x";
    }
    auto r = ParseSafetensorsHeader(m, m.size(), "fuzz");
    if (r.ok()) {
      ++accepted;
      // Whatever is accepted must lie inside the file.
      for (const auto& [name, info] : *r) ASSERT_LE(info.end, m.size());
    } else {
      ++rejected;
      ASSERT_FALSE(r.status().message().empty());
    }
  }
  EXPECT_GT(rejected, 1000);
  EXPECT_GT(accepted, 0);
}

}  // namespace
}  // namespace moe
