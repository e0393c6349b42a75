// The built `mambacpp` binary (MAMBACPP_CLI), run as a user would: outputs against the fixtures
// (logits, greedy ids, tokenizer ids), and every bad value giving its exit code (1 bad input,
// 2 usage) with one line naming the flag and value, and no output file after a failure.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "model_test_support.h"
#include "text/tokenizer.h"

namespace mambacpp {
namespace {

namespace fs = std::filesystem;
using testing::test_data;
using testing::TempDir;
using testing::to_ids;

using testing::CliRun;
using testing::read_text;
using testing::write_text;

// generate and logits run on one thread unless `args` say otherwise: on a busy 2-core CI
// machine, threads waiting at OpenMP barriers make a model this small many times slower.
CliRun run_cli(std::vector<std::string> args) {
  const bool computes = !args.empty() && (args[0] == "generate" || args[0] == "logits");
  const bool has_threads = std::find(args.begin(), args.end(), "--threads") != args.end() ||
                           std::find(args.begin(), args.end(), "-t") != args.end();
  if (computes && !has_threads) args.insert(args.end(), {"--threads", "1"});
  return testing::run_cli(args);
}

std::string describe(const std::vector<std::string>& args, const CliRun& r) {
  std::string cmd = "mambacpp";
  for (const auto& a : args) cmd += " '" + a + "'";
  return cmd + "\nexit " + std::to_string(r.code) + "\nstdout: " + r.out + "\nstderr: " + r.err;
}

CliRun expect_exit(int code, const std::vector<std::string>& args) {
  const CliRun r = run_cli(args);
  EXPECT_EQ(r.code, code) << describe(args, r);
  return r;
}

// Bad input: exit 1 and exactly one stderr line containing each of `mentions`.
void expect_bad_input(const std::vector<std::string>& args, const std::vector<std::string>& mentions) {
  const CliRun r = expect_exit(1, args);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << describe(args, r);
  for (const auto& m : mentions) EXPECT_NE(r.err.find(m), std::string::npos) << "missing '" << m << "'\n" << describe(args, r);
}

// "1,2,3" from ids[begin, end).
std::string join(const std::vector<int32_t>& ids, size_t begin, size_t end) {
  std::string out;
  for (size_t i = begin; i < end; ++i) out += (i > begin ? "," : "") + std::to_string(ids[i]);
  return out;
}

// The ids of one "1,2,3\n" line.
std::vector<int32_t> split_ids(const std::string& line) {
  std::vector<int32_t> ids;
  std::istringstream in(line);
  std::string piece;
  while (std::getline(in, piece, ',')) ids.push_back(std::stoi(piece));
  return ids;
}

const std::string kTinyModel = test_data("hf-tiny-mamba").string();
const std::string kTokenizer = test_data("tokenizer/tokenizer.json").string();

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    reference_ = new SafetensorsFile(read_safetensors(test_data("hf-tiny-mamba/reference.safetensors")));
    // The tiny model with the fixture tokenizer beside it (vocab 2000 > 512: prompts below use
    // only ids < 512).
    dir_ = new TempDir();
    with_tokenizer_ = (dir_->path() / "with-tokenizer").string();
    fs::create_directory(with_tokenizer_);
    for (const char* f : {"config.json", "model.safetensors"}) fs::copy(test_data("hf-tiny-mamba") / f, fs::path(with_tokenizer_) / f);
    fs::copy(kTokenizer, fs::path(with_tokenizer_) / "tokenizer.json");
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete dir_;
  }
  static std::vector<int32_t> reference_ids(const std::string& name) { return to_ids(reference_->tensors.at(name)); }
  static fs::path temp(const std::string& name) { return dir_->path() / name; }

  // Writes the reference input_ids [2, 37] as an --ids-file.
  static std::string input_ids_file() {
    const std::vector<int32_t> ids = reference_ids("input_ids");
    const fs::path path = temp("input_ids.txt");
    write_text(path, join(ids, 0, 37) + "\n" + join(ids, 37, 74) + "\n");
    return path.string();
  }

  static void expect_logits_match_reference(const std::string& check, const std::vector<std::string>& extra) {
    const std::string out = temp("logits.safetensors").string();
    std::vector<std::string> args = {"logits", "--model", kTinyModel, "--ids-file", input_ids_file(), "--out", out};
    args.insert(args.end(), extra.begin(), extra.end());
    expect_exit(0, args);
    const SafetensorsFile got = read_safetensors(out);
    const Tensor& logits = got.tensors.at("logits");
    const Tensor& expected = reference_->tensors.at("logits");
    ASSERT_EQ(logits.dtype(), DType::F32);
    ASSERT_EQ(logits.shape(), (Shape{2, 37, 512}));
    testing::expect_parity(check, expected.data<float>(),
                           logits.data<float>(), logits.numel(), 1e-4);
    fs::remove(out);
  }

  static SafetensorsFile* reference_;
  static TempDir* dir_;
  static std::string with_tokenizer_;
};

SafetensorsFile* CliTest::reference_ = nullptr;
TempDir* CliTest::dir_ = nullptr;
std::string CliTest::with_tokenizer_;

TEST_F(CliTest, LogitsEqualTheReference) { expect_logits_match_reference("cli logits", {"--threads", "2"}); }

TEST_F(CliTest, StepLogitsEqualTheReference) { expect_logits_match_reference("cli logits --step", {"--step"}); }

TEST_F(CliTest, GreedyPrintIdsEqualsTransformers) {
  const std::vector<int32_t> prompt = reference_ids("greedy_prompt");
  const std::vector<int32_t> expected = reference_ids("greedy_tokens");
  const CliRun r = expect_exit(0, {"generate", "--model", kTinyModel, "--ids", join(prompt, 0, prompt.size()), "--temperature",
                                "0", "--max-new-tokens", std::to_string(expected.size() - prompt.size()), "--print-ids"});
  EXPECT_EQ(r.out, join(expected, 0, expected.size()) + "\n");
  EXPECT_NE(r.err.find("tok/s"), std::string::npos) << r.err;  // timing on stderr, not stdout
}

TEST_F(CliTest, IdsInputWithoutTokenizerPrintsIds) {
  const CliRun r = expect_exit(0, {"generate", "--model", kTinyModel, "--ids", "5 6,7", "-n", "3", "--seed", "3"});
  EXPECT_EQ(r.out.rfind("5,6,7,", 0), 0u) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), ','), 5) << r.out;
}

TEST_F(CliTest, TextPromptStreamsPromptAndCompletion) {
  const Tokenizer tokenizer = Tokenizer::from_file(kTokenizer);
  const std::string prompt = "Hello, hi";  // ids 41,468,80,13,288,74: all < 512
  const std::vector<std::string> common = {"generate", "--model", with_tokenizer_, "--prompt", prompt, "-n", "8",
                                           "--seed", "11", "--ignore-eos"};
  std::vector<std::string> ids_args = common;
  ids_args.push_back("--print-ids");
  const CliRun ids_run = expect_exit(0, ids_args);
  const std::vector<int32_t> all = split_ids(ids_run.out);
  const std::vector<int32_t> prompt_ids = tokenizer.encode(prompt);
  ASSERT_EQ(all.size(), prompt_ids.size() + 8) << ids_run.out;
  EXPECT_TRUE(std::equal(prompt_ids.begin(), prompt_ids.end(), all.begin()));

  const CliRun text_run = expect_exit(0, common);
  const std::vector<int32_t> new_ids(all.begin() + ptrdiff_t(prompt_ids.size()), all.end());
  const std::string new_text = tokenizer.decode(new_ids);
  EXPECT_EQ(text_run.out, prompt + new_text + "\n");

  // --stop with the completion's first character: nothing of the completion is printed.
  ASSERT_FALSE(new_text.empty());
  ASSERT_TRUE(std::isprint((unsigned char)new_text[0])) << new_text;
  std::vector<std::string> stop_args = common;
  stop_args.insert(stop_args.end(), {"--stop", "\x01never", "--stop", new_text.substr(0, 1)});
  EXPECT_EQ(expect_exit(0, stop_args).out, prompt + "\n");
}

TEST_F(CliTest, PromptFileDecodesEachLineAsItsSoloRun) {
  const std::vector<std::string> prompts = {"a man who", "it's", "Hello! it's"};  // ids < 512
  std::string file_text;
  for (const auto& p : prompts) file_text += p + "\n";
  const fs::path file = temp("prompts.txt");
  write_text(file, file_text);
  const std::vector<std::string> options = {"--model", with_tokenizer_, "-n", "6", "--seed", "5", "--print-ids"};
  std::vector<std::string> batch_args = {"generate", "--prompt-file", file.string()};
  batch_args.insert(batch_args.end(), options.begin(), options.end());
  const CliRun batch = expect_exit(0, batch_args);
  std::string expected;
  for (const auto& p : prompts) {
    std::vector<std::string> solo_args = {"generate", "--prompt", p};
    solo_args.insert(solo_args.end(), options.begin(), options.end());
    expected += expect_exit(0, solo_args).out;
  }
  EXPECT_EQ(batch.out, expected);

  // Text mode: each completion (prompt + new text) on its own line, in input order.
  const Tokenizer tokenizer = Tokenizer::from_file(kTokenizer);
  std::string expected_text;
  std::istringstream lines(batch.out);
  std::string line;
  for (const auto& p : prompts) {
    std::getline(lines, line);
    const std::vector<int32_t> ids = split_ids(line);
    const std::vector<int32_t> new_ids(ids.begin() + ptrdiff_t(tokenizer.encode(p).size()), ids.end());
    expected_text += p + tokenizer.decode(new_ids) + "\n";
  }
  batch_args.pop_back();  // --print-ids
  EXPECT_EQ(expect_exit(0, batch_args).out, expected_text);
}

TEST_F(CliTest, SameSeedRepeatsAndEverySeedIsAccepted) {
  const std::vector<std::string> args = {"generate", "--model", kTinyModel, "--ids", "1,2,3", "-n", "10", "--seed",
                                         "18446744073709551615"};
  EXPECT_EQ(expect_exit(0, args).out, expect_exit(0, args).out);
  expect_exit(0, {"generate", "--model", kTinyModel, "--ids", "1,2,3", "-n", "1", "--seed", "0"});
}

TEST_F(CliTest, TokenizeAndDetokenizeMatchTheReference) {
  const nlohmann::json reference = nlohmann::json::parse(read_text(test_data("tokenizer/reference.json")));
  // The text module's tests check all 20 samples in-process; here a few that stress passing
  // bytes through: plain, tabs and newlines, accents/CJK/emoji, a special token, empty.
  int i = 0;
  for (int index : {0, 1, 2, 5, 7}) {
    const auto& sample = reference.at("samples").at(size_t(index));
    const std::string text = sample.at("text");
    const std::vector<int32_t> ids = sample.at("ids").get<std::vector<int32_t>>();
    const fs::path file = temp("text-" + std::to_string(i++));
    write_text(file, text);
    const CliRun tok = expect_exit(0, {"tokenize", "--tokenizer", kTokenizer, "--text-file", file.string()});
    EXPECT_EQ(tok.out, join(ids, 0, ids.size()) + "\n") << "text: " << text;
    const CliRun detok = expect_exit(0, {"detokenize", "--tokenizer", kTokenizer, "--ids", join(ids, 0, ids.size())});
    EXPECT_EQ(detok.out, text);
  }
  EXPECT_EQ(expect_exit(0, {"tokenize", "--tokenizer", kTokenizer, "--text", "Hello, world!"}).out, "41,468,80,13,694,2\n");
}

TEST_F(CliTest, InfoDescribesBothCheckpointFormats) {
  for (const char* dir : {"hf-tiny-mamba", "mamba-ssm-tiny"}) {
    const CliRun r = expect_exit(0, {"info", "--model", test_data(dir).string()});
    EXPECT_NE(r.out.find("vocab_size             512"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("parameters             98240"), std::string::npos) << r.out;  // 512*64 + 2 layers
    EXPECT_NE(r.out.find("F32 x"), std::string::npos) << r.out;
  }
}

TEST_F(CliTest, ConvertedMambaSsmCheckpointGivesTheReferenceLogits) {
  const fs::path out = temp("converted");
  expect_exit(0, {"convert", "--model", test_data("mamba-ssm-tiny").string(), "--out", out.string()});
  EXPECT_TRUE(fs::exists(out / "config.json"));
  EXPECT_TRUE(fs::exists(out / "generation_config.json"));
  const fs::path logits = temp("converted-logits.safetensors");
  expect_exit(0, {"logits", "--model", out.string(), "--ids-file", input_ids_file(), "--out", logits.string()});
  const SafetensorsFile got = read_safetensors(logits);
  testing::expect_parity("cli convert mamba_ssm -> HF logits", reference_->tensors.at("logits").data<float>(),
                         got.tensors.at("logits").data<float>(), got.tensors.at("logits").numel(), 1e-4);
  // A folder that is not empty is refused.
  expect_bad_input({"convert", "--model", kTinyModel, "--out", out.string()}, {"--out", "not an empty folder"});
}

TEST_F(CliTest, ConvertToBf16WritesBf16AndKeepsTheTokenizer) {
  const fs::path out = temp("converted-bf16");
  expect_exit(0, {"convert", "--model", with_tokenizer_, "--out", out.string(), "--dtype", "bf16"});
  EXPECT_TRUE(fs::exists(out / "tokenizer.json"));
  const SafetensorsFile file = read_safetensors(out / "model.safetensors");
  for (const auto& [name, t] : file.tensors) EXPECT_EQ(t.dtype(), DType::BF16) << name;
}

TEST_F(CliTest, OutOfRangeValuesExitOneNamingFlagAndValue) {
  const std::vector<std::string> base = {"generate", "--model", kTinyModel, "--ids", "1,2,3"};
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--temperature", "-1"}, {"--top-p", "0"},          {"--top-p", "1.5"},          {"--min-p", "1"},
      {"--repeat-penalty", "0"}, {"--max-new-tokens", "-1"}, {"--threads", "0"},        {"--top-k", "-1"},
      {"--temperature", "nan"}, {"--seed", "-1"},          {"--seed", "18446744073709551616"},
  };
  for (const auto& [flag, value] : cases) {
    std::vector<std::string> args = base;
    args.insert(args.end(), {flag, value});
    expect_bad_input(args, {flag, value});
  }
}

TEST_F(CliTest, BadIdsAndPromptsExitOne) {
  expect_bad_input({"generate", "--model", kTinyModel, "--ids", "1,512"}, {"512", "position 2", "vocab"});
  expect_bad_input({"generate", "--model", kTinyModel, "--ids", "-3"}, {"-3"});
  expect_bad_input({"generate", "--model", kTinyModel, "--ids", ""}, {"empty", "at least one token"});
  expect_bad_input({"generate", "--model", with_tokenizer_, "--prompt", ""}, {"--prompt", "at least one token"});
  expect_bad_input({"generate", "--model", kTinyModel, "--prompt", "Hello"}, {"tokenizer"});
  expect_bad_input({"generate", "--model", temp("no-such-model").string(), "--ids", "1"}, {"no-such-model"});
  const fs::path ids = temp("bad-ids.txt");
  write_text(ids, "1,2\n3,700\n");
  expect_bad_input({"generate", "--model", kTinyModel, "--ids-file", ids.string()}, {"700", "line 2"});
  expect_bad_input({"detokenize", "--tokenizer", kTokenizer, "--ids", "1,2000"}, {"2000"});
  expect_bad_input({"tokenize", "--tokenizer", temp("missing.json").string(), "--text", "a"}, {"missing.json"});
}

TEST_F(CliTest, UsageErrorsExitTwo) {
  expect_exit(2, {"generate", "--model", kTinyModel, "--ids", "1", "--no-such-flag"});
  expect_exit(2, {"generate", "--model", kTinyModel, "--ids", "1", "--temperature", "warm"});
  expect_exit(2, {"generate", "--model", kTinyModel, "--ids", "1", "--top-k", "1.5"});
  expect_exit(2, {"generate", "--model", kTinyModel, "--ids", "1,x"});
  expect_exit(2, {"generate", "--model", kTinyModel});                                  // no input
  expect_exit(2, {"generate", "--model", kTinyModel, "--ids", "1", "--prompt", "a"});  // two inputs
  expect_exit(2, {"logits", "--model", kTinyModel, "--ids", "1"});                      // no --out
  expect_exit(2, {"nonsense"});
}

TEST_F(CliTest, FailedLogitsRunsLeaveNoFile) {
  const fs::path out = temp("never.safetensors");
  const fs::path unequal = temp("unequal.txt");
  write_text(unequal, "1,2,3\n4,5\n");
  expect_bad_input({"logits", "--model", kTinyModel, "--ids-file", unequal.string(), "--out", out.string()},
                   {"line 2", "same length"});
  EXPECT_FALSE(fs::exists(out));
  expect_bad_input({"logits", "--model", kTinyModel, "--ids", "1,600", "--out", out.string()}, {"600"});
  EXPECT_FALSE(fs::exists(out));
  // Nothing else (no temporary) was left in the folder either.
  for (const auto& entry : fs::directory_iterator(dir_->path()))
    EXPECT_EQ(entry.path().filename().string().find("never"), std::string::npos) << entry.path();
}

TEST_F(CliTest, EveryCommandHasHelp) {
  for (const char* cmd : {"info", "generate", "logits", "tokenize", "detokenize", "convert"}) {
    const CliRun r = expect_exit(0, {cmd, "--help"});
    EXPECT_NE(r.out.find("--"), std::string::npos) << r.out;
  }
  const CliRun generate = expect_exit(0, {"generate", "--help"});
  for (const char* flag : {"--temperature", "--top-k", "--top-p", "--min-p", "--repeat-penalty", "--stop", "--seed",
                           "--threads", "--tokenizer", "--print-ids", "--max-new-tokens", "--prompt-file", "--ids-file"})
    EXPECT_NE(generate.out.find(flag), std::string::npos) << flag;
}

}  // namespace
}  // namespace mambacpp
