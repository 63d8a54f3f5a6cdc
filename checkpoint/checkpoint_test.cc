#include <filesystem>
#include <fstream>
#include <string>

#include "checkpoint/model_config.h"
#include "checkpoint/model_source.h"
#include "checkpoint/random_checkpoint.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/safetensors_writer.h"
#include "checkpoint/tokenizer.h"
#include "common/status.h"
#include "common/status_matchers.h"
#include "common/test_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::moe::testing::IsOk;
using ::moe::testing::StatusIs;
namespace fs = std::filesystem;

std::string TempDir(const std::string& name) {
  fs::path p = ::moe::testing::ScratchDir("checkpoint_test", name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

// A safetensors file made of `header` and `data_bytes` zero bytes, with the length prefix given or computed.
std::string FileBytes(const std::string& header, size_t data_bytes, int64_t length_override = -1) {
  uint64_t len = length_override >= 0 ? static_cast<uint64_t>(length_override) : header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(len >> (8 * i));
  return out + header + std::string(data_bytes, '\0');
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

TEST(SafetensorsHeaderTest, AcceptsWellFormedHeader) {
  const std::string h = R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                        R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}})";
  std::string bytes = FileBytes(h, 32);
  auto t = ParseSafetensorsHeader(bytes, bytes.size(), "f");
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->size(), 2u);
  EXPECT_EQ(t->at("a").shape, (std::vector<int64_t>{2, 3}));
}

struct BadHeaderCase {
  const char* name;
  std::string bytes;
  absl::StatusCode code;
  const char* message;
};

TEST(SafetensorsHeaderTest, RejectsEachKindOfCorruptionWithAClearError) {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const BadHeaderCase cases[] = {
      {"truncated file", std::string("\x05\x00\x00", 3), absl::StatusCode::kDataLoss, "truncated file"},
      {"header length past end", FileBytes("{}", 0, 1000), absl::StatusCode::kDataLoss, "runs past the end"},
      {"malformed JSON", FileBytes("{\"a\": [", 0), absl::StatusCode::kInvalidArgument, "malformed JSON header"},
      {"not an object", FileBytes("[1,2]", 0), absl::StatusCode::kInvalidArgument, "not an object"},
      {"out-of-range offsets", FileBytes("{" + ok_entry + "}", 4), absl::StatusCode::kInvalidArgument,
       "tensor 'a': data_offsets end 8 is out of range"},
      {"overlapping offsets",
       FileBytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
       absl::StatusCode::kInvalidArgument, "overlaps tensor"},
      {"size disagrees with shape", FileBytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
       absl::StatusCode::kInvalidArgument, "does not match shape"},
      {"begin after end", FileBytes(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8),
       absl::StatusCode::kInvalidArgument, "begin after end"},
      {"negative dim", FileBytes(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", 0),
       absl::StatusCode::kInvalidArgument, "non-negative"},
      {"missing dtype", FileBytes(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4),
       absl::StatusCode::kInvalidArgument, "missing dtype"},
  };
  for (const BadHeaderCase& c : cases) {
    auto t = ParseSafetensorsHeader(c.bytes, c.bytes.size(), "model.safetensors");
    EXPECT_THAT(t, StatusIs(c.code, c.message)) << c.name;
    if (!t.ok()) EXPECT_THAT(std::string(t.status().message()), ::testing::HasSubstr("model.safetensors")) << c.name;
  }
}

TEST(ModelConfigTest, ParsesMixtralAndQwenAndRejectsBadFields) {
  auto mixtral = ModelConfig::FromJson(
      R"({"model_type":"mixtral","vocab_size":100,"hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,
          "num_key_value_heads":2,"num_local_experts":8,"num_experts_per_tok":2,"intermediate_size":96})", "c");
  ASSERT_THAT(mixtral, IsOk());
  EXPECT_EQ(mixtral->head_dim, 16);
  EXPECT_TRUE(mixtral->norm_topk_prob);
  EXPECT_EQ(mixtral->ExpertTensor(1, 3, FfnProjection::kDown), "model.layers.1.block_sparse_moe.experts.3.w2.weight");

  auto qwen = ModelConfig::FromJson(
      R"({"model_type":"qwen2_moe","vocab_size":100,"hidden_size":64,"num_hidden_layers":4,"num_attention_heads":4,
          "num_experts":8,"num_experts_per_tok":2,"moe_intermediate_size":32,"intermediate_size":128,
          "shared_expert_intermediate_size":48,"decoder_sparse_step":2,"mlp_only_layers":[3]})", "c");
  ASSERT_THAT(qwen, IsOk());
  EXPECT_FALSE(qwen->norm_topk_prob);
  EXPECT_FALSE(qwen->IsMoeLayer(0));
  EXPECT_TRUE(qwen->IsMoeLayer(1));
  EXPECT_FALSE(qwen->IsMoeLayer(3));  // mlp_only_layers wins
  EXPECT_EQ(qwen->ExpertTensor(1, 0, FfnProjection::kGate), "model.layers.1.mlp.experts.0.gate_proj.weight");

  EXPECT_THAT(ModelConfig::FromJson(R"({"model_type":"llama"})", "cfg.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, "unknown model type 'llama' (supported: mixtral, qwen2_moe)"));
  EXPECT_THAT(ModelConfig::FromJson(R"({"model_type":"mixtral","vocab_size":"big"})", "cfg.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, "cfg.json: field 'vocab_size' must be an integer"));
  EXPECT_THAT(ModelConfig::FromJson("{not json", "cfg.json"), StatusIs(absl::StatusCode::kInvalidArgument, "not a JSON object"));
}

class ModelSourceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(TempDir("random"));
    RandomCheckpointOptions o;
    o.dtype = DType::kBF16;
    ASSERT_THAT(WriteRandomCheckpoint(*dir_, o), IsOk());
  }
  static std::string* dir_;
};
std::string* ModelSourceTest::dir_ = nullptr;

TEST_F(ModelSourceTest, ReadsGeneratedCheckpointDeterministically) {
  MOE_ASSERT_OK_AND_ASSIGN(auto source, ModelSource::Open(*dir_));
  const ModelConfig& c = source->config();
  for (const auto& [name, shape] : c.ExpectedTensors()) {
    auto t = source->Tensor(name, shape);
    ASSERT_THAT(t, IsOk()) << name;
    EXPECT_EQ(t->dtype, DType::kBF16);
  }
  // Same options, same bytes.
  const std::string again = TempDir("random_again");
  RandomCheckpointOptions o;
  o.dtype = DType::kBF16;
  o.tokenizer = false;
  ASSERT_THAT(WriteRandomCheckpoint(again, o), IsOk());
  std::ifstream a(*dir_ + "/model.safetensors", std::ios::binary), b(again + "/model.safetensors", std::ios::binary);
  std::string sa((std::istreambuf_iterator<char>(a)), {}), sb((std::istreambuf_iterator<char>(b)), {});
  EXPECT_EQ(sa, sb);
}

TEST_F(ModelSourceTest, MissingTensorAndWrongShapeNameFileAndTensor) {
  MOE_ASSERT_OK_AND_ASSIGN(auto source, ModelSource::Open(*dir_));
  EXPECT_THAT(source->Tensor("model.layers.9.mlp.nothing", {1}),
              StatusIs(absl::StatusCode::kNotFound, "model.safetensors: missing tensor 'model.layers.9.mlp.nothing'"));
  EXPECT_THAT(source->Tensor("model.norm.weight", {65}),
              StatusIs(absl::StatusCode::kInvalidArgument, "tensor 'model.norm.weight' has shape [64], expected [65]"));
}

TEST(ModelSourceErrorsTest, WrongDtypeUnknownModelTypeAndTruncatedFile) {
  const std::string dir = TempDir("bad");
  std::ofstream(dir + "/config.json")
      << R"({"model_type":"mixtral","vocab_size":4,"hidden_size":2,"num_hidden_layers":1,"num_attention_heads":1,
             "num_local_experts":1,"num_experts_per_tok":1,"intermediate_size":2})";
  WriteFile(dir + "/model.safetensors",
            FileBytes(R"({"model.norm.weight":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})", 16));
  MOE_ASSERT_OK_AND_ASSIGN(auto source, ModelSource::Open(dir));
  EXPECT_THAT(source->Tensor("model.norm.weight", {2}),
              StatusIs(absl::StatusCode::kInvalidArgument, "tensor 'model.norm.weight': unsupported dtype I64"));

  // Truncated: the header promises more data than the file holds.
  const std::string full = FileBytes(R"({"model.norm.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8);
  WriteFile(dir + "/model.safetensors", full.substr(0, full.size() - 3));
  MOE_ASSERT_OK_AND_ASSIGN(auto truncated, ModelSource::Open(dir));
  EXPECT_THAT(truncated->Tensor("model.norm.weight", {2}),
              StatusIs(absl::StatusCode::kInvalidArgument, "model.safetensors: tensor 'model.norm.weight': data_offsets end 8 is out of range"));

  std::ofstream(dir + "/config.json") << R"({"model_type":"gpt2"})";
  EXPECT_THAT(ModelSource::Open(dir), StatusIs(absl::StatusCode::kInvalidArgument, "config.json: field 'model_type' names unknown model type 'gpt2'"));
}

TEST(ModelSourceShardedTest, OpensOnlyTheShardsOfTheTensorsAskedFor) {
  const std::string dir = TempDir("sharded");
  RandomCheckpointOptions o;
  o.shards = 4;
  o.tokenizer = false;
  ASSERT_THAT(WriteRandomCheckpoint(dir, o), IsOk());
  MOE_ASSERT_OK_AND_ASSIGN(auto source, ModelSource::Open(dir));
  EXPECT_EQ(source->files_opened(), 0);
  const ModelConfig& c = source->config();
  ASSERT_THAT(source->Tensor(c.ExpertTensor(0, 0, FfnProjection::kGate), {c.expert_ffn_size, c.hidden_size}), IsOk());
  EXPECT_EQ(source->files_opened(), 1);
  EXPECT_EQ(source->tensors_read(), 1);
  for (const auto& [name, shape] : c.ExpectedTensors()) ASSERT_THAT(source->Tensor(name, shape), IsOk()) << name;
  EXPECT_EQ(source->files_opened(), 4);
}

TEST(TokenizerTest, RoundTripsTextAndRejectsNonModelFiles) {
  const std::string dir = TempDir("tok");
  RandomCheckpointOptions o;
  o.num_layers = 1;
  ASSERT_THAT(WriteRandomCheckpoint(dir, o), IsOk());
  MOE_ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::Load(dir + "/tokenizer.model"));
  const std::string text = "Add 123 and 456 to get 579. Zebra ümlaut!";
  MOE_ASSERT_OK_AND_ASSIGN(auto ids, tok->Encode(text));
  EXPECT_GT(ids.size(), 3u);
  EXPECT_EQ(tok->Decode(ids), text);
  EXPECT_THAT(Tokenizer::Load(dir + "/config.json"), StatusIs(absl::StatusCode::kInvalidArgument, "not a SentencePiece model"));
}

TEST(SafetensorsWriterTest, WritesWhatTheReaderReads) {
  const std::string path = TempDir("writer") + "/w.safetensors";
  std::vector<TensorSpec> specs = {{"x", DType::kF16, {3}}, {"y", DType::kF32, {2, 2}}};
  ASSERT_THAT(WriteSafetensors(path, specs, [](size_t i, std::vector<float>* v) {
                if (i == 0) *v = {1.0f, -2.0f, 0.5f};
                else *v = {1, 2, 3, 4};
              }),
              IsOk());
  MOE_ASSERT_OK_AND_ASSIGN(auto f, SafetensorsFile::Open(path));
  MOE_ASSERT_OK_AND_ASSIGN(TensorView x, f->Get("x"));
  EXPECT_EQ(LoadAsFloat(x.data, x.dtype, 1), -2.0f);
  MOE_ASSERT_OK_AND_ASSIGN(TensorView y, f->Get("y"));
  EXPECT_EQ(LoadAsFloat(y.data, y.dtype, 3), 4.0f);
}

}  // namespace
}  // namespace moe
