// Training data: token files (round trips at both id widths, every kind of corrupt header),
// seeded random windows, the train/val split, and `mambacpp prepare` end to end through the
// built binary (MAMBACPP_CLI): output against the tokenizer's own ids, skipped inputs, and bad
// flags or folders giving exit codes 1/2 with nothing written.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "test_support.h"
#include "text/tokenizer.h"
#include "train/token_data.h"


namespace mambacpp {
namespace {

namespace fs = std::filesystem;
using testing::expect_bad_input;
using testing::list_dir;
using testing::read_bytes;
using testing::read_text;
using testing::TempDir;
using testing::write_bytes;
using testing::write_text;

std::vector<int32_t> random_ids(size_t n, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = int32_t(rng.below(uint64_t(vocab)));
  return ids;
}

std::vector<int32_t> read_all(const TokenFile& f) {
  std::vector<int32_t> ids(size_t(f.size()));
  f.read(0, ids);
  return ids;
}

// ---- Token files ----------------------------------------------------------------------------

TEST(TokenFile, RoundTripsAtBothWidths) {
  TempDir dir;
  // Vocabulary sizes on both sides of the uint16 limit, each with its largest id present.
  for (const auto& [vocab, width] : {std::pair<int64_t, int>{2000, 2}, {65536, 2}, {65537, 4}, {200000, 4}}) {
    std::vector<int32_t> ids = random_ids(5000, vocab, uint64_t(vocab));
    ids[1234] = int32_t(vocab - 1);
    const fs::path path = dir / cat("v", vocab, ".tokens");
    write_token_file(path, ids, vocab);
    EXPECT_EQ(fs::file_size(path), kTokenFileHeaderBytes + ids.size() * size_t(width)) << vocab;
    const TokenFile f = TokenFile::open(path);
    EXPECT_EQ(f.bytes_per_id(), width);
    EXPECT_EQ(f.vocab_size(), vocab);
    EXPECT_EQ(read_all(f), ids) << vocab;
    EXPECT_EQ(f[1234], vocab - 1);
  }
  // No temporary file is left beside them.
  EXPECT_EQ(list_dir(dir.path()).size(), 4u);
}

TEST(TokenFile, HeaderIsTheDocumentedLayout) {
  TempDir dir;
  write_token_file(dir / "t.tokens", std::vector<int32_t>{7, 300}, 1000);
  const std::vector<std::byte> b = read_bytes(dir / "t.tokens");
  ASSERT_EQ(b.size(), 36u);
  const auto u8 = [&](size_t i) { return unsigned(b[i]); };
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(b.data()), 4), "MCTK");
  EXPECT_EQ(u8(4), 1u);                      // version
  EXPECT_EQ(u8(8), 2u);                      // bytes per id
  EXPECT_EQ(u8(12) | u8(13) << 8, 1000u);    // vocabulary size
  EXPECT_EQ(u8(16), 2u);                     // count
  EXPECT_EQ(u8(32) | u8(33) << 8, 7u);       // first id
  EXPECT_EQ(u8(34) | u8(35) << 8, 300u);     // second id
}

TEST(TokenFile, EmptyFileOfIdsIsValid) {
  TempDir dir;
  write_token_file(dir / "e.tokens", std::vector<int32_t>{}, 10);
  EXPECT_EQ(TokenFile::open(dir / "e.tokens").size(), 0);
}

TEST(TokenFile, CorruptFilesAreRefusedWithTheReason) {
  TempDir dir;
  const fs::path good = dir / "good.tokens";
  write_token_file(good, random_ids(100, 500, 1), 500);
  const std::vector<std::byte> bytes = read_bytes(good);
  const auto variant = [&](const std::string& name, const std::function<void(std::vector<std::byte>&)>& edit) {
    std::vector<std::byte> b = bytes;
    edit(b);
    const fs::path p = dir / name;
    write_bytes(p, b);
    return p.string();
  };
  const auto put_u32 = [](std::vector<std::byte>& b, size_t at, uint32_t v) { std::memcpy(&b[at], &v, 4); };
  const auto put_u64 = [](std::vector<std::byte>& b, size_t at, uint64_t v) { std::memcpy(&b[at], &v, 8); };

  std::string p = variant("magic", [](auto& b) { b[0] = std::byte('X'); });
  expect_bad_input([&] { TokenFile::open(p); }, {p, "MCTK"});
  p = variant("short", [](auto& b) { b.resize(20); });
  expect_bad_input([&] { TokenFile::open(p); }, {p, "20 bytes", "too short"});
  p = variant("truncated", [](auto& b) { b.pop_back(); });
  expect_bad_input([&] { TokenFile::open(p); }, {p, "100 ids", "199 bytes", "truncated"});
  p = variant("too-many", [&](auto& b) { put_u64(b, 16, 101); });
  expect_bad_input([&] { TokenFile::open(p); }, {p, "101 ids"});
  p = variant("huge-count", [&](auto& b) { put_u64(b, 16, ~uint64_t(0)); });
  expect_bad_input([&] { TokenFile::open(p); }, {p, "18446744073709551615 ids"});
  p = variant("version", [&](auto& b) { put_u32(b, 4, 2); });
  expect_bad_input([&] { TokenFile::open(p); }, {p, "version 2"});
  p = variant("width", [&](auto& b) { put_u32(b, 8, 3); });
  expect_bad_input([&] { TokenFile::open(p); }, {p, "bytes per id is 3"});
  p = variant("vocab0", [&](auto& b) { put_u32(b, 12, 0); });
  expect_bad_input([&] { TokenFile::open(p); }, {p, "vocabulary size 0"});
  p = variant("reserved", [&](auto& b) { b[24] = std::byte(1); });
  expect_bad_input([&] { TokenFile::open(p); }, {p, "reserved"});
  p = variant("bad-id", [&](auto& b) { b[32 + 2 * 57] = std::byte(0xF4); b[32 + 2 * 57 + 1] = std::byte(0x01); });
  expect_bad_input([&] { TokenFile::open(p); }, {p, "id 500 at position 57", "vocabulary (500 tokens)"});
  const std::string missing = (dir / "missing.tokens").string();
  expect_bad_input([&] { TokenFile::open(missing); }, {missing});
}

TEST(TokenFile, WriterRefusesIdsOutsideTheVocabularyAndLeavesNothing) {
  TempDir dir;
  const std::string p = (dir / "t.tokens").string();
  expect_bad_input([&] { write_token_file(p, std::vector<int32_t>{1, 2, 10}, 10); }, {p, "id 10 at position 2"});
  expect_bad_input([&] { write_token_file(p, std::vector<int32_t>{1, -1}, 10); }, {p, "id -1 at position 1"});
  expect_bad_input([&] { write_token_file(p, std::vector<int32_t>{}, 0); }, {p, "vocabulary size 0"});
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

// ---- Windows --------------------------------------------------------------------------------

TEST(TokenFile, WindowsStayInRangeCoverEveryStartAndRepeatWithTheSeed) {
  TempDir dir;
  const std::vector<int32_t> ids = random_ids(40, 100, 2);
  write_token_file(dir / "w.tokens", ids, 100);
  const TokenFile f = TokenFile::open(dir / "w.tokens");
  std::vector<int32_t> window(37);  // starts 0..3
  const auto draw = [&](uint64_t seed) {
    Rng rng(seed);
    std::vector<int64_t> starts;
    for (int i = 0; i < 200; ++i) {
      const int64_t start = f.sample_window(rng, window);
      EXPECT_TRUE(start >= 0 && start <= 3) << start;
      EXPECT_TRUE(std::equal(window.begin(), window.end(), ids.begin() + start)) << "window at " << start;
      starts.push_back(start);
    }
    return starts;
  };
  const std::vector<int64_t> a = draw(7);
  EXPECT_EQ(std::set<int64_t>(a.begin(), a.end()), (std::set<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(draw(7), a) << "same seed, same windows";
  EXPECT_NE(draw(8), a) << "another seed, other windows";

  std::vector<int32_t> whole(40);
  Rng rng(1);
  EXPECT_EQ(f.sample_window(rng, whole), 0);
  EXPECT_EQ(whole, ids);
  std::vector<int32_t> too_long(41);
  expect_bad_input([&] { f.sample_window(rng, too_long); }, {"w.tokens", "40 tokens", "window of 41"});
}

// ---- The train/val split --------------------------------------------------------------------

std::vector<int32_t> iota_ids(int32_t first, int32_t n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), first);
  return v;
}

TEST(TrainValSplit, EveryDocumentGivesAContiguousSpanToValAndTheRestToTrain) {
  // Documents of distinct ids (eos = 0 appears in none), so each piece can be traced back.
  const std::vector<std::vector<int32_t>> docs = {iota_ids(1, 50), iota_ids(100, 10), iota_ids(200, 3), iota_ids(300, 1)};
  Rng rng(5);
  const TrainValSplit split = split_train_val(docs, 0, 0.2, rng);
  // The pieces between eos tokens, each assigned to the document whose ids it holds.
  const auto pieces_by_document = [&](const std::vector<int32_t>& stream) {
    EXPECT_TRUE(stream.empty() || stream.back() == 0) << "a stream ends with eos";
    std::vector<std::vector<std::vector<int32_t>>> by_doc(docs.size());
    std::vector<int32_t> piece;
    for (const int32_t id : stream) {
      if (id != 0) {
        piece.push_back(id);
        continue;
      }
      EXPECT_FALSE(piece.empty()) << "two eos in a row";
      for (size_t d = 0; d < docs.size(); ++d)
        if (piece.front() >= docs[d].front() && piece.front() <= docs[d].back()) by_doc[d].push_back(piece);
      piece.clear();
    }
    return by_doc;
  };
  const auto train = pieces_by_document(split.train);
  const auto val = pieces_by_document(split.val);
  // round(0.2 x 50) = 10, round(0.2 x 10) = 2, round(0.2 x 3) = 1, round(0.2 x 1) = 0 ids to val,
  // in one piece; train keeps the rest in at most two (before and after that piece).
  const size_t val_lengths[] = {10, 2, 1, 0};
  for (size_t d = 0; d < docs.size(); ++d) {
    ASSERT_EQ(val[d].size(), val_lengths[d] ? 1u : 0u) << "document " << d;
    if (val_lengths[d]) {
      EXPECT_EQ(val[d][0].size(), val_lengths[d]) << "document " << d;
    }
    EXPECT_TRUE(train[d].size() == 1 || train[d].size() == 2) << "document " << d;
    // All pieces in the order of their first ids rebuild the document.
    std::vector<std::vector<int32_t>> all = train[d];
    all.insert(all.end(), val[d].begin(), val[d].end());
    std::sort(all.begin(), all.end());
    std::vector<int32_t> rebuilt;
    for (const auto& p : all) rebuilt.insert(rebuilt.end(), p.begin(), p.end());
    EXPECT_EQ(rebuilt, docs[d]) << "document " << d;
  }

  Rng again(5);
  const TrainValSplit repeat = split_train_val(docs, 0, 0.2, again);
  EXPECT_EQ(repeat.train, split.train);
  EXPECT_EQ(repeat.val, split.val);
}

TEST(TrainValSplit, NoValidationKeepsDocumentsWholeAndInOrder) {
  Rng rng(1);
  const std::vector<std::vector<int32_t>> docs = {{5, 6}, {7}};
  const TrainValSplit split = split_train_val(docs, 0, 0.0, rng);
  EXPECT_EQ(split.train, (std::vector<int32_t>{5, 6, 0, 7, 0}));
  EXPECT_TRUE(split.val.empty());
}

// ---- mambacpp prepare -----------------------------------------------------------------------

using testing::CliRun;
using testing::run_cli;

class PrepareCli : public ::testing::Test {
 protected:
  // Two documents of English-like text (about 9 KB together) and a binary file.
  void SetUp() override {
    std::string a, b;
    for (int i = 0; i < 60; ++i) {
      a.append("The quick brown fox ").append(std::to_string(i)).append(" jumps over the lazy dog.\n");
      b.append("A stitch in time saves nine; ").append(i % 3 ? "look" : "leap").append(" before you leap!\n");
    }
    doc_a_ = a;
    doc_b_ = b + "Ünïcödé: 東京\n";
    write_text(work_ / "a.txt", doc_a_);
    write_text(work_ / "b.txt", doc_b_);
    write_bytes(work_ / "a.dat", "\x01\x00\x02", 3);
  }

  CliRun prepare(std::vector<std::string> args) {
    args.insert(args.begin(), "prepare");
    args.insert(args.end(), {"--threads", "1"});
    return run_cli(args);
  }
  std::string path(const std::string& name) const { return (work_ / name).string(); }

  // Exit `code` with one stderr line (after any notes) naming each of `mentions`, no output
  // folder, and nothing but the inputs left in the working folder.
  void expect_failure(int code, const std::vector<std::string>& args, const std::vector<std::string>& mentions) {
    const CliRun r = prepare(args);
    EXPECT_EQ(r.code, code) << r.err;
    for (const auto& m : mentions) EXPECT_NE(r.err.find(m), std::string::npos) << "missing '" << m << "' in " << r.err;
    EXPECT_EQ(list_dir(work_.path()), (std::vector<std::string>{"a.dat", "a.txt", "b.txt"})) << r.err;
  }

  TempDir work_;
  std::string doc_a_, doc_b_;
};

TEST_F(PrepareCli, TrainsATokenizerAndWritesTheDocumentsIds) {
  const std::string out = path("data");
  const CliRun r = prepare({"--input", path("a.txt"), path("b.txt"), path("a.dat"), path("a.txt"), "--out", out,
                            "--train-tokenizer", "350", "--val-fraction", "0"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("skipped 1 input file(s) that hold NUL bytes"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("skipped 1 input file(s) that repeat an earlier input"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("prepared "), std::string::npos) << r.out;
  EXPECT_EQ(list_dir(out), (std::vector<std::string>{"prepare.json", "tokenizer.json", "train.tokens", "val.tokens"}));

  const Tokenizer tok = Tokenizer::from_file(fs::path(out) / "tokenizer.json");
  EXPECT_EQ(tok.vocab_size(), 350);
  // Without validation, train is each document's ids followed by <|endoftext|> (id 0).
  std::vector<int32_t> expected = tok.encode(doc_a_);
  expected.push_back(0);
  const std::vector<int32_t> b = tok.encode(doc_b_);
  expected.insert(expected.end(), b.begin(), b.end());
  expected.push_back(0);
  const TokenFile train = TokenFile::open(fs::path(out) / "train.tokens");
  EXPECT_EQ(train.vocab_size(), 350);
  EXPECT_EQ(read_all(train), expected);
  EXPECT_EQ(TokenFile::open(fs::path(out) / "val.tokens").size(), 0);

  const nlohmann::json info = nlohmann::json::parse(read_text(fs::path(out) / "prepare.json"));
  EXPECT_EQ(info["train_tokens"], expected.size());
  EXPECT_EQ(info["val_tokens"], 0);
  EXPECT_EQ(info["vocab_size"], 350);
  EXPECT_EQ(info["eos_id"], 0);
  EXPECT_EQ(info["tokenizer"]["source"], "trained");
  EXPECT_EQ(info["inputs"].size(), 2u);
  EXPECT_EQ(info["skipped"].size(), 2u);

  // The same command again replaces the earlier output with an identical one.
  const std::vector<std::byte> first = read_bytes(fs::path(out) / "tokenizer.json");
  ASSERT_EQ(prepare({"--input", path("a.txt"), path("b.txt"), "--out", out, "--train-tokenizer", "350",
                     "--val-fraction", "0"}).code, 0);
  EXPECT_EQ(read_bytes(fs::path(out) / "tokenizer.json"), first);
  EXPECT_EQ(list_dir(work_.path()), (std::vector<std::string>{"a.dat", "a.txt", "b.txt", "data"}));
}

TEST_F(PrepareCli, GivenTokenizerIsCopiedAndValidationSplitOff) {
  const std::string out = path("data");
  const std::string fixture = MAMBACPP_TEST_DATA "/tokenizer/tokenizer.json";
  const CliRun r = prepare({"--input", path("a.txt"), path("b.txt"), "--out", out, "--tokenizer", fixture,
                            "--val-fraction", "0.1", "--seed", "3"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_bytes(fs::path(out) / "tokenizer.json"), read_bytes(fixture));
  const Tokenizer tok = Tokenizer::from_file(fixture);
  const std::vector<std::vector<int32_t>> docs = {tok.encode(doc_a_), tok.encode(doc_b_)};
  Rng rng(3);
  const TrainValSplit split = split_train_val(docs, 0, 0.1, rng);
  EXPECT_EQ(read_all(TokenFile::open(fs::path(out) / "train.tokens")), split.train);
  EXPECT_EQ(read_all(TokenFile::open(fs::path(out) / "val.tokens")), split.val);
  const size_t total = docs[0].size() + docs[1].size();
  EXPECT_NEAR(double(split.val.size() - 2), 0.1 * double(total), 2.0);
}

TEST_F(PrepareCli, BadInputsExitOneWithNothingWritten) {
  const std::string out = path("data");
  expect_failure(1, {"--input", path("nope.txt"), "--out", out, "--train-tokenizer", "300"}, {"nope.txt", "no such file"});
  expect_failure(1, {"--input", path("a.dat"), "--out", out, "--train-tokenizer", "300"}, {"no text to prepare"});
  expect_failure(1, {"--input", work_.path().string(), "--out", out, "--train-tokenizer", "300"}, {"is a folder"});
  expect_failure(1, {"--input", path("a.txt"), "--out", out, "--train-tokenizer", "257"},
                 {"--train-tokenizer 257", "[258, 1048576]"});
  expect_failure(1, {"--input", path("a.txt"), "--out", out, "--train-tokenizer", "1048577"}, {"--train-tokenizer"});
  expect_failure(1, {"--input", path("a.txt"), "--out", out, "--train-tokenizer", "300", "--val-fraction", "0.6"},
                 {"--val-fraction 0.6", "[0, 0.5]"});
  expect_failure(1, {"--input", path("a.txt"), "--out", out, "--train-tokenizer", "300", "--val-fraction", "nan"},
                 {"--val-fraction nan"});
  expect_failure(1, {"--input", path("a.txt"), "--out", out, "--tokenizer", path("none.json")}, {"none.json"});
  // An output folder under a regular file cannot be made.
  expect_failure(1, {"--input", path("a.txt"), "--out", path("a.txt") + "/data", "--train-tokenizer", "300"},
                 {"a.txt/data"});
}

TEST_F(PrepareCli, UsageErrorsExitTwo) {
  const std::string out = path("data");
  expect_failure(2, {"--input", path("a.txt"), "--out", out}, {"tokenizer"});
  expect_failure(2, {"--input", path("a.txt"), "--out", out, "--tokenizer", "x.json", "--train-tokenizer", "300"},
                 {"tokenizer"});
  expect_failure(2, {"--input", path("a.txt"), "--out", out, "--train-tokenizer", "many"}, {"--train-tokenizer"});
  expect_failure(2, {"--out", out, "--train-tokenizer", "300"}, {"--input"});
}

TEST_F(PrepareCli, ForeignFolderIsNotReplaced) {
  const fs::path out = work_ / "data";
  fs::create_directory(out);
  write_text(out / "notes.txt", "mine");
  const CliRun r = prepare({"--input", path("a.txt"), "--out", out.string(), "--train-tokenizer", "300"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("holds no prepare.json"), std::string::npos) << r.err;
  EXPECT_EQ(list_dir(out), std::vector<std::string>{"notes.txt"});
  EXPECT_EQ(list_dir(work_.path()), (std::vector<std::string>{"a.dat", "a.txt", "b.txt", "data"}));
}

TEST_F(PrepareCli, TooLittleTextForValidationIsAnError) {
  write_text(work_ / "tiny.txt", "hi");
  const CliRun r = prepare({"--input", path("tiny.txt"), "--out", path("data"), "--train-tokenizer", "300"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("leaves no validation tokens"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(work_ / "data"));
}

}  // namespace
}  // namespace mambacpp
