// Checkpoint folders: the three fixtures read (single safetensors, pytorch_model.bin, and a
// sharded copy made here), sharding mistakes are named, and write_hf_checkpoint produces a
// folder that reads back identically, replaces an old one safely and leaves nothing on failure.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "io/json_fields.h"
#include "test_support.h"

namespace mambacpp {
namespace {

using nlohmann::json;
using namespace mambacpp::testing;
namespace fs = std::filesystem;

const fs::path kHf = test_data("hf-tiny-mamba");

void expect_same_tensors(const TensorMap& got, const TensorMap& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, w] : want) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(got.count(name));
    const Tensor& g = got.at(name);
    EXPECT_EQ(g.dtype(), w.dtype());
    ASSERT_EQ(g.shape(), w.shape());
    EXPECT_EQ(std::memcmp(g.raw(), w.raw(), w.nbytes()), 0);
  }
}

TEST(Checkpoint, ReadsHuggingFaceFolder) {
  const Checkpoint ck = read_checkpoint(kHf);
  EXPECT_EQ(ck.config.d_model, 64);
  EXPECT_EQ(ck.tensors.size(), 22u);
  EXPECT_EQ(ck.weights_file, (kHf / "model.safetensors").string());
  EXPECT_FALSE(ck.tokenizer.has_value());
}

TEST(Checkpoint, ReadsMambaSsmFolder) {
  const Checkpoint ck = read_checkpoint(test_data("mamba-ssm-tiny"));
  EXPECT_EQ(ck.config.dialect, ConfigDialect::MambaSsm);
  EXPECT_EQ(ck.tensors.size(), 23u);
  EXPECT_TRUE(ck.tensors.count("backbone.embedding.weight"));
  EXPECT_NE(ck.weights_file.find("pytorch_model.bin"), std::string::npos);
}

TEST(Checkpoint, MissingPieces) {
  TempDir dir;
  expect_bad_input([&] { read_checkpoint(dir / "nowhere"); }, {"nowhere", "does not exist"});
  write_text(dir / "file", "x");
  expect_bad_input([&] { read_checkpoint(dir / "file"); }, {"file", "not a folder"});
  expect_bad_input([&] { read_checkpoint(dir.path()); }, {dir.path().string(), "no config.json"});
  fs::copy_file(kHf / "config.json", dir / "config.json");
  expect_bad_input([&] { read_checkpoint(dir.path()); }, {"no weights", "model.safetensors", "pytorch_model.bin"});
  write_text(dir / "tokenizer.json", "{}");
  fs::copy_file(kHf / "model.safetensors", dir / "model.safetensors");
  EXPECT_EQ(read_checkpoint(dir.path()).tokenizer, dir / "tokenizer.json");
}

// hf-tiny-mamba split in two shards with an index, as save_pretrained(max_shard_size=...) does.
class Sharded : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::copy_file(kHf / "config.json", dir_ / "config.json");
    whole_ = read_checkpoint(kHf).tensors;
    std::vector<std::pair<std::string, Tensor>> a, b;
    for (const auto& [name, t] : whole_) {
      (name.find("layers.1.") == std::string::npos ? a : b).emplace_back(name, t);
      index_["weight_map"][name] = name.find("layers.1.") == std::string::npos ? "model-00001-of-00002.safetensors"
                                                                               : "model-00002-of-00002.safetensors";
    }
    index_["metadata"] = {{"total_size", 394000}};
    write_safetensors(dir_ / "model-00001-of-00002.safetensors", a);
    write_safetensors(dir_ / "model-00002-of-00002.safetensors", b);
  }
  void write_index() { write_text(dir_ / "model.safetensors.index.json", index_.dump()); }

  TempDir dir_;
  TensorMap whole_;
  json index_;
};

TEST_F(Sharded, ReadsLikeTheSingleFile) {
  write_index();
  const Checkpoint ck = read_checkpoint(dir_.path());
  expect_same_tensors(ck.tensors, whole_);
  EXPECT_NE(ck.weights_file.find("model.safetensors.index.json"), std::string::npos);
}

TEST_F(Sharded, MissingShard) {
  write_index();
  fs::remove(dir_ / "model-00002-of-00002.safetensors");
  expect_bad_input(
      [&] { read_checkpoint(dir_.path()); },
      {"model.safetensors.index.json", "shard model-00002-of-00002.safetensors", "backbone.layers.1.", "missing"});
}

TEST_F(Sharded, TensorNotInItsShard) {
  index_["weight_map"]["backbone.norm_f.weight"] = "model-00002-of-00002.safetensors";
  write_index();
  expect_bad_input([&] { read_checkpoint(dir_.path()); },
                   {"backbone.norm_f.weight", "model-00002-of-00002.safetensors", "does not hold it"});
}

TEST_F(Sharded, TensorMissingFromTheIndex) {
  index_["weight_map"].erase("backbone.norm_f.weight");
  write_index();
  expect_bad_input([&] { read_checkpoint(dir_.path()); },
                   {"model-00001-of-00002.safetensors", "backbone.norm_f.weight", "does not list"});
}

TEST_F(Sharded, BadIndex) {
  index_["weight_map"]["backbone.norm_f.weight"] = "../model-00001-of-00002.safetensors";
  write_index();
  expect_bad_input([&] { read_checkpoint(dir_.path()); },
                   {"weight_map.backbone.norm_f.weight", "shard file in the same folder"});
  index_["weight_map"]["backbone.norm_f.weight"] = 3;
  write_index();
  expect_bad_input([&] { read_checkpoint(dir_.path()); }, {"weight_map.backbone.norm_f.weight", "expected a string"});
  write_text(dir_ / "model.safetensors.index.json", R"({"weight_map": {}})");
  expect_bad_input([&] { read_checkpoint(dir_.path()); }, {"weight_map is empty"});
  write_text(dir_ / "model.safetensors.index.json", R"({"weight_map": )");
  expect_bad_input([&] { read_checkpoint(dir_.path()); }, {"model.safetensors.index.json", "invalid JSON"});
}

TEST_F(Sharded, CorruptShardIsNamed) {
  write_index();
  auto bytes = read_bytes(dir_ / "model-00002-of-00002.safetensors");
  bytes.resize(bytes.size() - 4);
  write_bytes(dir_ / "model-00002-of-00002.safetensors", bytes);
  expect_bad_input([&] { read_checkpoint(dir_.path()); },
                   {"model-00002-of-00002.safetensors", "past the data section"});
}

TEST(WriteCheckpoint, RoundTripsWithTokenizerAndGenerationConfig) {
  TempDir dir;
  const Checkpoint src = read_checkpoint(kHf);
  const fs::path out = dir / "out";
  write_hf_checkpoint(out, src.config, src.tensors, test_data("tokenizer/tokenizer.json"));
  const Checkpoint back = read_checkpoint(out);
  expect_same_tensors(back.tensors, src.tensors);
  EXPECT_EQ(back.config.d_inner, src.config.d_inner);
  EXPECT_EQ(back.config.eos_token_id, 0);
  ASSERT_TRUE(back.tokenizer.has_value());
  EXPECT_EQ(read_bytes(*back.tokenizer), read_bytes(test_data("tokenizer/tokenizer.json")));
  const json gen = read_json_file(out / "generation_config.json");
  EXPECT_EQ(gen["eos_token_id"], 0);
  EXPECT_EQ(gen["bos_token_id"], 0);
  const json cfg = read_json_file(out / "config.json");
  EXPECT_EQ(cfg["architectures"], json::array({"MambaForCausalLM"}));
  EXPECT_EQ(cfg["torch_dtype"], "float32");
  // The same bytes as transformers' own save_pretrained.
  EXPECT_EQ(read_bytes(out / "model.safetensors"), read_bytes(kHf / "model.safetensors"));
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"out"});
}

TEST(WriteCheckpoint, ConvertsMambaSsmToHf) {
  TempDir dir;
  Checkpoint src = read_checkpoint(test_data("mamba-ssm-tiny"));
  TensorMap hf;  // the rename the model layer does; here by hand
  for (const auto& [name, t] : src.tensors) {
    if (name == "lm_head.weight") continue;
    hf[name == "backbone.embedding.weight" ? "backbone.embeddings.weight" : name] = t;
  }
  write_hf_checkpoint(dir / "hf", src.config, hf, std::nullopt);
  const Checkpoint back = read_checkpoint(dir / "hf");
  EXPECT_EQ(back.config.dialect, ConfigDialect::HuggingFace);
  EXPECT_FALSE(back.tokenizer.has_value());
  expect_same_tensors(back.tensors, read_checkpoint(kHf).tensors);
}

TEST(WriteCheckpoint, ReplacesAnOldCheckpoint) {
  TempDir dir;
  const Checkpoint src = read_checkpoint(kHf);
  write_hf_checkpoint(dir / "out", src.config, src.tensors, test_data("tokenizer/tokenizer.json"));
  TensorMap one{{"backbone.norm_f.weight", src.tensors.at("backbone.norm_f.weight")}};
  write_hf_checkpoint(dir / "out/", src.config, one, std::nullopt);  // trailing slash: same folder
  const Checkpoint back = read_checkpoint(dir / "out");
  EXPECT_EQ(back.tensors.size(), 1u);
  EXPECT_FALSE(back.tokenizer.has_value()) << "old files must not survive the replacement";
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"out"});
}

TEST(WriteCheckpoint, RefusesToReplaceSomethingElse) {
  TempDir dir;
  const Checkpoint src = read_checkpoint(kHf);
  fs::create_directory(dir / "photos");
  write_text(dir / "photos" / "cat.jpg", "meow");
  expect_bad_input([&] { write_hf_checkpoint(dir / "photos", src.config, src.tensors, std::nullopt); },
                   {"photos", "not a checkpoint folder"});
  EXPECT_EQ(list_dir(dir / "photos"), std::vector<std::string>{"cat.jpg"});
  write_text(dir / "plain", "x");
  expect_bad_input([&] { write_hf_checkpoint(dir / "plain", src.config, src.tensors, std::nullopt); },
                   {"not a folder"});
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"photos", "plain"}));
}

TEST(WriteCheckpoint, FailureLeavesNothingAndKeepsTheOld) {
  TempDir dir;
  const Checkpoint src = read_checkpoint(kHf);
  expect_bad_input([&] { write_hf_checkpoint(dir / "a" / "b", src.config, src.tensors, std::nullopt); }, {"b"});
  EXPECT_TRUE(list_dir(dir.path()).empty());
  expect_bad_input([&] { write_hf_checkpoint(dir / "out", src.config, src.tensors, dir / "no-tokenizer.json"); },
                   {"no-tokenizer.json"});
  EXPECT_TRUE(list_dir(dir.path()).empty());

  // A failure after files were staged (a tensor the writer refuses): the old checkpoint stays whole.
  write_hf_checkpoint(dir / "out", src.config, src.tensors, std::nullopt);
  TensorMap bad = src.tensors;
  bad[std::string("bad\xff name")] = src.tensors.at("backbone.norm_f.weight");
  expect_bad_input([&] { write_hf_checkpoint(dir / "out", src.config, bad, std::nullopt); }, {"UTF-8"});
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"out"});
  expect_same_tensors(read_checkpoint(dir / "out").tensors, src.tensors);
}

}  // namespace
}  // namespace mambacpp
