// The byte-level BPE trainer: word counting as encoding splits, merges derived by hand on a tiny
// corpus (ties included), HF tokenizers' own merges on the fortunes corpus (the fixture
// tokenizer), the tokenizer.json layout against HF's, exact vocabulary size, determinism across
// thread counts, round trips through the trained tokenizer, and bad options.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "core/threads.h"
#include "test_support.h"
#include "text/bpe_trainer.h"
#include "text/tokenizer.h"

namespace mambacpp {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using text::BpeTrainingOptions;
using text::BpeVocabulary;
using text::WordCounts;
using testing::expect_bad_input;

const std::vector<std::string> kSpecials = {"<|endoftext|>", "<|padding|>"};

WordCounts count(const std::vector<std::string>& documents) {
  const std::vector<std::string_view> views(documents.begin(), documents.end());
  return text::count_words(views, kSpecials);
}

BpeVocabulary train(const std::vector<std::string>& documents, int64_t vocab_size) {
  BpeTrainingOptions options;
  options.vocab_size = vocab_size;
  return text::train_bpe(count(documents), options);
}

// Merges as tokenizer.json spells them.
std::vector<std::pair<std::string, std::string>> spelled_merges(const BpeVocabulary& v) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [l, r] : v.merges) out.emplace_back(v.tokens[size_t(l)], v.tokens[size_t(r)]);
  return out;
}

// About 60 KB of English-like text: words of random syllables, some punctuation, digits,
// newlines and a few non-ASCII words, so that thousands of merges exist.
std::string synthetic_text(uint64_t seed) {
  static const char* kSyllables[] = {"the", "an", "ing", "er", "mo", "ka", "li", "st", "or", "pe", "qu", "ion",
                                     "ré", "zu", "ox", "al", "tr", "ne", "fa", "wy"};
  static const char* kGlue[] = {" ", " ", " ", " ", ", ", ". ", "\n", "  ", "'s ", " 42 ", " — ", "\t"};
  Rng rng(seed);
  std::string out;
  while (out.size() < 60000) {
    const int syllables = 1 + int(rng.below(4));
    for (int s = 0; s < syllables; ++s) out += kSyllables[rng.below(std::size(kSyllables))];
    out += kGlue[rng.below(std::size(kGlue))];
  }
  return out;
}

TEST(BpeTrainer, CountsWordsAsEncodingSplitsThem) {
  // GPT-2's regex: a leading space joins a word, a whitespace run before a word leaves that
  // word its space, trailing whitespace is one word; special tokens are cut out; invalid UTF-8
  // becomes U+FFFD (one per maximal ill-formed subsequence).
  const WordCounts words = count({"Hello world  foo\n", "foo<|endoftext|>foo's", "\xff\xfe"});
  const WordCounts expected = {{"Hello", 1}, {" world", 1}, {" ", 1},  {" foo", 1}, {"\n", 1},
                               {"foo", 2},   {"'s", 1},     {"\xEF\xBF\xBD\xEF\xBF\xBD", 1}};
  EXPECT_EQ(words, expected);
}

TEST(BpeTrainer, HandDerivedMergesOnATinyCorpus) {
  // Words: "hello", " hello" x2, " help". Pair counts: (h,e) 4, (e,l) 4, (l,l) 3, (l,o) 3,
  // (Ġ,h) 3, (l,p) 1. Ties go to the pair of smaller ids, and byte tokens are numbered in code
  // point order (e < h < l < Ġ), merged tokens after them in creation order:
  //  1. (e,l) 4 beats (h,e) 4           -> words: h el l o | Ġ h el l o x2 | Ġ h el p
  //  2. (h,el) 4                        -> hel l o | Ġ hel l o x2 | Ġ hel p
  //  3. (l,o) 3 = (hel,l) 3 = (Ġ,hel) 3: l < Ġ < hel   -> hel lo | Ġ hel lo x2 | Ġ hel p
  //  4. (Ġ,hel) 3 = (hel,lo) 3: Ġ < hel -> hel lo | Ġhel lo x2 | Ġhel p
  //  5. (Ġhel,lo) 2                     -> hel lo | Ġhello x2 | Ġhel p
  //  6. (hel,lo) 1 = (Ġhel,p) 1: hel was made before Ġhel
  //  7. (Ġhel,p) 1; then no pair is left: 258 + 7 tokens, though 300 were asked for.
  const BpeVocabulary v = train({"hello hello hello help"}, 300);
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"e", "l"}, {"h", "el"}, {"l", "o"}, {"Ġ", "hel"}, {"Ġhel", "lo"}, {"hel", "lo"}, {"Ġhel", "p"}};
  EXPECT_EQ(spelled_merges(v), expected);
  EXPECT_EQ(v.tokens.size(), 258u + 7);
  EXPECT_EQ(v.tokens.back(), "Ġhelp");

  // Asked for 3 merges, it stops after the third.
  const BpeVocabulary short_v = train({"hello hello hello help"}, 261);
  EXPECT_EQ(short_v.tokens.size(), 261u);
  EXPECT_EQ(spelled_merges(short_v), std::vector(expected.begin(), expected.begin() + 3));
}

TEST(BpeTrainer, RepeatedSymbolsMergeLeftToRight) {
  // "aaaaa" holds (a,a) four times, overlapping; merging left to right gives aa aa a, whose
  // pairs (aa,aa) and (aa,a) tie at 1: same left part, and a < aa, so aa aaa; then aaaaa.
  const BpeVocabulary v = train({"aaaaa"}, 300);
  const std::vector<std::pair<std::string, std::string>> expected = {{"a", "a"}, {"aa", "a"}, {"aa", "aaa"}};
  EXPECT_EQ(spelled_merges(v), expected);
}

TEST(BpeTrainer, SpecialTokensInTheTextAreNotLearned) {
  const BpeVocabulary v = train({"ab<|endoftext|>ab<|padding|>ab"}, 300);
  const std::vector<std::pair<std::string, std::string>> expected = {{"a", "b"}};
  EXPECT_EQ(spelled_merges(v), expected);
}

TEST(BpeTrainer, VocabularyIsExactlyTheSizeAskedAndSelfConsistent) {
  const int64_t kVocab = 1500;
  const BpeVocabulary v = train({synthetic_text(1), synthetic_text(2)}, kVocab);
  ASSERT_EQ(int64_t(v.tokens.size()), kVocab);
  std::unordered_map<std::string, int32_t> ids;
  for (size_t i = 0; i < v.tokens.size(); ++i) EXPECT_TRUE(ids.emplace(v.tokens[i], int32_t(i)).second) << v.tokens[i];
  // Every merge joins two earlier tokens into one that exists; all merges are distinct.
  std::set<std::pair<int32_t, int32_t>> seen;
  for (size_t m = 0; m < v.merges.size(); ++m) {
    const auto [l, r] = v.merges[m];
    ASSERT_TRUE(l >= 2 && r >= 2 && size_t(l) < v.tokens.size() && size_t(r) < v.tokens.size()) << "merge " << m;
    const auto merged = ids.find(v.tokens[size_t(l)] + v.tokens[size_t(r)]);
    ASSERT_NE(merged, ids.end()) << "merge " << m;
    EXPECT_GT(merged->second, std::max(l, r)) << "merge " << m;
    EXPECT_TRUE(seen.insert(v.merges[m]).second) << "merge " << m << " repeats";
  }
}

TEST(BpeTrainer, WritesTheLayoutHfWrites) {
  // The fixture tokenizer.json was written by HF tokenizers for the same kind of BPE: everything
  // but the learned vocab and merges must be identical, and so must the first 258 ids.
  std::ifstream in(MAMBACPP_TEST_DATA "/tokenizer/tokenizer.json");
  json hf = json::parse(in);
  json ours = json::parse(text::to_tokenizer_json(train({synthetic_text(3)}, 2000)));
  ASSERT_EQ(ours["model"]["vocab"].size(), 2000u);
  ASSERT_EQ(ours["model"]["merges"].size(), 2000u - 258);
  for (const auto& [token, id] : hf["model"]["vocab"].items()) {
    if (id.get<int>() < 258) {
      EXPECT_EQ(ours["model"]["vocab"][token], id) << token;
    }
  }
  for (json* j : {&hf, &ours}) {
    (*j)["model"].erase("vocab");
    (*j)["model"].erase("merges");
  }
  EXPECT_EQ(ours, hf);
}

TEST(BpeTrainer, TrainedTokenizerRoundTripsAndCompresses) {
  const std::string corpus = synthetic_text(4);
  const Tokenizer tok = Tokenizer::from_json_text(text::to_tokenizer_json(train({corpus}, 1000)), "trained");
  EXPECT_EQ(tok.vocab_size(), 1000);
  EXPECT_EQ(tok.token_to_id("<|endoftext|>"), 0);
  EXPECT_EQ(tok.token_to_id("<|padding|>"), 1);
  for (const std::string& text : {corpus, synthetic_text(5), std::string("naïve café, 東京 🙂 <|endoftext|> x\r\n\t!")}) {
    const std::vector<int32_t> ids = tok.encode(text);
    EXPECT_EQ(tok.decode(ids), text);
  }
  // On its own corpus a 1000-token BPE needs far fewer tokens than bytes.
  EXPECT_LT(tok.encode(corpus).size() * 3, corpus.size());
}

TEST(BpeTrainer, SameInputSameFileAtAnyThreadCount) {
  const std::vector<std::string> docs = {synthetic_text(6), synthetic_text(7), synthetic_text(8)};
  set_num_threads(1);
  const std::string one = text::to_tokenizer_json(train(docs, 800));
  set_num_threads(2);
  const std::string two = text::to_tokenizer_json(train(docs, 800));
  EXPECT_EQ(one, two);
  EXPECT_EQ(text::to_tokenizer_json(train(docs, 800)), two);
}

TEST(BpeTrainer, MatchesHfTokenizersOnTheFortunesCorpus) {
  // tests/data/tokenizer was trained by HF tokenizers (BpeTrainer, 2000 tokens, the ByteLevel
  // alphabet, <|endoftext|> and <|padding|>) on Debian's fortunes files, which HF reads line by
  // line: fed the same lines, our merges must be HF's, in HF's order.
  const fs::path dir = "/usr/share/games/fortunes";
  ASSERT_TRUE(fs::is_directory(dir)) << dir << " is missing: scripts/setup.sh installs the Debian package fortunes";
  std::vector<std::string> lines;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string ext = entry.path().extension().string();
    if (!entry.is_regular_file() || entry.is_symlink() || ext == ".dat" || ext == ".u8") continue;
    std::ifstream in(entry.path(), std::ios::binary);
    const std::string all{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    for (size_t begin = 0; begin < all.size();) {
      const size_t end = std::min(all.find('\n', begin), all.size() - 1) + 1;
      lines.push_back(all.substr(begin, end - begin));
      begin = end;
    }
  }
  const BpeVocabulary v = train(lines, 2000);
  std::ifstream in(MAMBACPP_TEST_DATA "/tokenizer/tokenizer.json");
  const json hf = json::parse(in);
  const auto& hf_merges = hf["model"]["merges"];
  ASSERT_EQ(v.merges.size(), hf_merges.size());
  size_t same = 0;
  while (same < v.merges.size() && hf_merges[same][0] == v.tokens[size_t(v.merges[same].first)] &&
         hf_merges[same][1] == v.tokens[size_t(v.merges[same].second)])
    ++same;
  std::printf("PARITY bpe_trainer_vs_hf identical_leading_merges=%zu of %zu\n", same, v.merges.size());
  EXPECT_EQ(same, v.merges.size()) << "first difference at merge " << same;
}

TEST(BpeTrainer, RejectsBadOptions) {
  const WordCounts words = count({"some text"});
  BpeTrainingOptions o;
  o.vocab_size = 257;
  expect_bad_input([&] { text::train_bpe(words, o); }, {"vocabulary size 257", "[258, 1048576]"});
  o.vocab_size = text::kMaxTrainedVocab + 1;
  expect_bad_input([&] { text::train_bpe(words, o); }, {"1048577", "out of range"});
  o.vocab_size = 300;
  o.special_tokens = {"<s>", "<s>"};
  expect_bad_input([&] { text::train_bpe(words, o); }, {"<s>", "twice"});
  o.special_tokens = {""};
  expect_bad_input([&] { text::train_bpe(words, o); }, {"special token is empty"});
  o.special_tokens = {"!"};
  expect_bad_input([&] { text::train_bpe(words, o); }, {"!", "byte token"});
}

}  // namespace
}  // namespace mambacpp
