// The byte-level BPE tokenizer against HF tokenizers' ids (tests/data/tokenizer, made by
// tokenizers 0.23.2), round trips, both merge forms, the NFC normalizer, added-token flags,
// streaming decode and malformed files. bench/tokenizer/differential.sh compares with HF on
// ~100k more texts.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "text/pre_tokenizer.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

namespace mambacpp {
namespace {

using nlohmann::json;

const std::string kTokenizerPath = MAMBACPP_TEST_DATA "/tokenizer/tokenizer.json";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct Sample {
  std::string text;
  std::vector<int32_t> ids;
};

std::vector<Sample> reference_samples() {
  const json ref = json::parse(read_file(MAMBACPP_TEST_DATA "/tokenizer/reference.json"));
  std::vector<Sample> samples;
  for (const auto& s : ref.at("samples")) {
    samples.push_back({s.at("text").get<std::string>(), s.at("ids").get<std::vector<int32_t>>()});
  }
  return samples;
}

json fixture_json() {
  static const json fixture = json::parse(read_file(kTokenizerPath));
  return fixture;
}

Tokenizer from_json(const json& j) { return Tokenizer::from_json_text(j.dump(), "test.json"); }

std::string ids_str(const std::vector<int32_t>& ids) { return json(ids).dump(); }

void expect_reference_ids(const Tokenizer& tok) {
  const auto samples = reference_samples();
  ASSERT_EQ(samples.size(), 20u);
  for (const Sample& s : samples) {
    EXPECT_EQ(ids_str(tok.encode(s.text)), ids_str(s.ids)) << "text: " << json(s.text).dump();
  }
}

TEST(Tokenizer, ReferenceIdsEqualHuggingFace) {
  const Tokenizer tok = Tokenizer::from_file(kTokenizerPath);
  expect_reference_ids(tok);
  expect_reference_ids(tok);  // again, now from the word cache
}

TEST(Tokenizer, ReferenceTextsRoundTrip) {
  const Tokenizer tok = Tokenizer::from_file(kTokenizerPath);
  for (const Sample& s : reference_samples()) {
    EXPECT_EQ(tok.decode(s.ids), s.text) << "ids: " << ids_str(s.ids);
  }
}

// Random valid UTF-8: words, digits, whitespace runs of all kinds, punctuation, contractions,
// many scripts, combining marks, emoji sequences, special tokens.
std::string random_text(Rng& rng) {
  static const std::vector<std::string> pieces = {
      "the", "The", "fortune", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2009",
      "\u0085", "\u2028", "'s", "'re", "'ll", "'S", "''", "...", "--", "%", "<|endoftext|>",
      "<|padding|>", "<|endoftext", "café", "cafe\u0301", "naïve", "日本語", "한국어", "Привет",
      "مرحبا", "नमस्ते", "🙂", "👍🏽", "👨‍👩‍👧", "🏳️‍🌈", "\u200d", "\ufe0f", "١٢٣", "３４", "½",
      "𝐀𝐁𝐂", std::string("\0", 1), "\x7f", "\xef\xbf\xbd"};
  static const std::vector<std::pair<char32_t, char32_t>> blocks = {
      {0x20, 0x7E}, {0xA0, 0x24F}, {0x300, 0x36F}, {0x370, 0x4FF}, {0x600, 0x6FF}, {0x900, 0x97F},
      {0x2000, 0x206F}, {0x3040, 0x30FF}, {0x4E00, 0x9FA5}, {0xAC00, 0xD7A3}, {0x1F300, 0x1F64F}};
  std::string s;
  const uint64_t atoms = 1 + rng.below(30);
  for (uint64_t a = 0; a < atoms; ++a) {
    const uint64_t kind = rng.below(4);
    if (kind == 0) {
      s += pieces[rng.below(pieces.size())];
    } else if (kind == 1) {
      s += std::to_string(rng.below(100000000));
    } else {
      const auto [lo, hi] = blocks[rng.below(blocks.size())];
      const uint64_t n = 1 + rng.below(5);
      for (uint64_t k = 0; k < n; ++k) text::append_utf8(s, lo + char32_t(rng.below(hi - lo + 1)));
    }
  }
  return s;
}

TEST(Tokenizer, RandomTextsRoundTrip) {
  const Tokenizer tok = Tokenizer::from_file(kTokenizerPath);
  Rng rng(1234);
  for (int i = 0; i < 2000; ++i) {
    const std::string text = random_text(rng);
    ASSERT_TRUE(text::is_valid_utf8(text));
    const auto ids = tok.encode(text);
    ASSERT_EQ(tok.decode(ids), text) << "text: " << json(text).dump() << " ids: " << ids_str(ids);
  }
}

TEST(Tokenizer, ConcurrentEncodingSharesTheWordCacheSafely) {
  std::vector<std::string> texts;
  Rng rng(5);
  for (int i = 0; i < 500; ++i) texts.push_back(random_text(rng));
  std::vector<std::vector<int32_t>> expected;
  {
    const Tokenizer fresh = Tokenizer::from_file(kTokenizerPath);
    for (const auto& t : texts) expected.push_back(fresh.encode(t));
  }
  const Tokenizer shared = Tokenizer::from_file(kTokenizerPath);
  std::vector<int> wrong(2, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < texts.size(); ++i) {
        const size_t k = t == 0 ? i : texts.size() - 1 - i;  // the two threads meet in the middle
        wrong[size_t(t)] += shared.encode(texts[k]) != expected[k];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong[0] + wrong[1], 0);
}

TEST(Tokenizer, MergesInBothJsonFormsGiveTheSameIds) {
  json pairs = fixture_json();
  ASSERT_TRUE(pairs["model"]["merges"][0].is_array());
  json strings = pairs;
  for (auto& m : strings["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  strings["model"]["merges"].insert(strings["model"]["merges"].begin(), "#version: 0.2");
  expect_reference_ids(from_json(strings));
  const Tokenizer a = from_json(pairs), b = from_json(strings);
  Rng rng(7);
  for (int i = 0; i < 300; ++i) {
    const std::string text = random_text(rng);
    ASSERT_EQ(ids_str(a.encode(text)), ids_str(b.encode(text))) << json(text).dump();
  }
}

TEST(Tokenizer, NfcNormalizerComposesBeforeEncoding) {
  const std::string composed = "caf\u00e9 na\u00efve \uac00\u11a7", decomposed = "cafe\u0301 nai\u0308ve \uac00\u11a7";
  const Tokenizer plain = Tokenizer::from_file(kTokenizerPath);
  ASSERT_NE(ids_str(plain.encode(composed)), ids_str(plain.encode(decomposed)));
  for (const json& normalizer :
       {json{{"type", "NFC"}}, json{{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}}}}}) {
    json j = fixture_json();
    j["normalizer"] = normalizer;
    const Tokenizer nfc = from_json(j);
    EXPECT_EQ(ids_str(nfc.encode(decomposed)), ids_str(plain.encode(composed))) << normalizer.dump();
    // U+11A7 after a Hangul syllable stays (utf8proc 2.8 alone would drop it).
    EXPECT_EQ(nfc.decode(nfc.encode(decomposed)), composed);
  }
}

TEST(Tokenizer, SpecialTokensAreMatchedLiterallyAndDecoded) {
  const Tokenizer tok = Tokenizer::from_file(kTokenizerPath);
  const auto eot = tok.token_to_id("<|endoftext|>");
  ASSERT_TRUE(eot.has_value());
  EXPECT_EQ(*eot, 0);
  const auto ids = tok.encode("a<|endoftext|>b<|padding|>");
  std::vector<int32_t> expected = tok.encode("a");
  expected.push_back(0);
  for (int32_t id : tok.encode("b")) expected.push_back(id);
  expected.push_back(1);
  EXPECT_EQ(ids_str(ids), ids_str(expected));
  EXPECT_EQ(tok.decode(ids), "a<|endoftext|>b<|padding|>");
}

// A copy of the fixture with one more added token.
Tokenizer with_added_token(const std::string& content, bool single_word, bool lstrip, bool rstrip) {
  json j = fixture_json();
  j["added_tokens"].push_back({{"id", 2000}, {"content", content}, {"single_word", single_word},
                               {"lstrip", lstrip}, {"rstrip", rstrip}, {"normalized", false},
                               {"special", true}});
  return from_json(j);
}

std::vector<int32_t> concat(std::vector<std::vector<int32_t>> parts) {
  std::vector<int32_t> all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

TEST(Tokenizer, AddedTokenFlags) {
  const Tokenizer base = Tokenizer::from_file(kTokenizerPath);
  const std::vector<int32_t> mask = {2000};
  {
    const Tokenizer tok = with_added_token("<mask>", false, false, false);
    EXPECT_EQ(tok.vocab_size(), 2001);
    EXPECT_EQ(ids_str(tok.encode("a <mask> b")),
              ids_str(concat({base.encode("a "), mask, base.encode(" b")})));
  }
  {  // lstrip and rstrip swallow the whitespace around the token
    const Tokenizer tok = with_added_token("<mask>", false, true, true);
    EXPECT_EQ(ids_str(tok.encode("a \t<mask>  b")),
              ids_str(concat({base.encode("a"), mask, base.encode("b")})));
  }
  {  // single_word: only where no word character touches it
    const Tokenizer tok = with_added_token("<mask>", true, false, false);
    EXPECT_EQ(ids_str(tok.encode("a<mask>b")), ids_str(base.encode("a<mask>b")));
    EXPECT_EQ(ids_str(tok.encode("a <mask>.")),
              ids_str(concat({base.encode("a "), mask, base.encode(".")})));
  }
}

TEST(Tokenizer, TemplatePostProcessorAddsItsTokens) {
  json j = fixture_json();
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<|endoftext|>"}, {"type_id", 0}}}},
                  {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"special_tokens", {{"<|endoftext|>", {{"id", "<|endoftext|>"}, {"ids", {0}}, {"tokens", {"<|endoftext|>"}}}}}}};
  const Tokenizer tok = from_json(j);
  const Tokenizer base = Tokenizer::from_file(kTokenizerPath);
  EXPECT_EQ(ids_str(tok.encode("Hello")), ids_str(concat({{0}, base.encode("Hello")})));
}

TEST(Tokenizer, InvalidUtf8IsReplacedLikeFromUtf8Lossy) {
  // Unicode 15, section 3.9, table 3-8: one U+FFFD per maximal ill-formed subsequence.
  EXPECT_EQ(text::replace_invalid_utf8("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
            "a\uFFFD\uFFFD\uFFFDb\uFFFDc\uFFFD\uFFFDd");
  EXPECT_EQ(text::replace_invalid_utf8("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");  // a surrogate
  EXPECT_EQ(text::replace_invalid_utf8("\xC0\xAF"), "\uFFFD\uFFFD");            // an overlong
  EXPECT_FALSE(text::is_valid_utf8("\xF4\x90\x80\x80"));                       // above U+10FFFF
  const Tokenizer tok = Tokenizer::from_file(kTokenizerPath);
  EXPECT_EQ(ids_str(tok.encode("ab\xFF\xFE" "cd")), ids_str(tok.encode("ab\uFFFD\uFFFDcd")));
}

TEST(Tokenizer, StreamDecoderNeverEmitsHalfACharacter) {
  const Tokenizer tok = Tokenizer::from_file(kTokenizerPath);
  const std::string text = "Unicode: café 日本語 🙂 👨‍👩‍👧!";
  const auto ids = tok.encode(text);
  StreamDecoder stream(tok);
  std::string joined;
  int held_back = 0;
  for (const int32_t id : ids) {
    const std::string piece = stream.push(id);
    EXPECT_TRUE(text::is_valid_utf8(piece)) << "after id " << id << ": " << json(piece).dump();
    held_back += piece.size() < tok.token_bytes(id).size();
    joined += piece;
  }
  joined += stream.flush();
  EXPECT_EQ(joined, text);
  EXPECT_GT(held_back, 0) << "the fixture's small vocabulary splits these characters over tokens";
}

TEST(Tokenizer, VocabularyQueries) {
  const Tokenizer tok = Tokenizer::from_file(kTokenizerPath);
  EXPECT_EQ(tok.vocab_size(), 2000);
  EXPECT_EQ(tok.token_bytes(222), " ");  // "Ġ", from the reference ids of " "
  ASSERT_TRUE(tok.token_to_id("\u0120").has_value());
  EXPECT_EQ(*tok.token_to_id("\u0120"), 222);
  EXPECT_FALSE(tok.token_to_id("no such token").has_value());
  for (const int32_t bad : {-1, 2000, 1 << 30}) {
    try {
      tok.decode({bad});
      ADD_FAILURE() << "decode accepted id " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("token id " + std::to_string(bad)), std::string::npos) << e.what();
    }
  }
}

TEST(Tokenizer, Gpt2MatcherAgreesWithPcre2) {
  const text::Regex pcre2(text::kGpt2Pattern, false, "test");
  Rng rng(99);
  for (int i = 0; i < 3000; ++i) {
    const std::string s = random_text(rng);
    std::vector<text::Span> fast, slow;
    text::gpt2_matches(s, fast);
    pcre2.find_matches(s, slow);
    ASSERT_EQ(fast.size(), slow.size()) << json(s).dump();
    for (size_t k = 0; k < fast.size(); ++k) {
      ASSERT_EQ(fast[k].begin, slow[k].begin) << json(s).dump();
      ASSERT_EQ(fast[k].end, slow[k].end) << json(s).dump();
    }
  }
}

// ---- malformed tokenizer.json ---------------------------------------------------------------

// A small well-formed tokenizer.json (encodes "hello" and " hello"), to break in one place.
json tiny_json() {
  json j = fixture_json();
  j["model"]["vocab"] = {{"<|endoftext|>", 0}, {"<|padding|>", 1}, {"e", 2}, {"h", 3}, {"l", 4},
                         {"o", 5}, {"\u0120", 6}, {"he", 7}, {"ll", 8}, {"hell", 9}, {"hello", 10},
                         {"\u0120hello", 11}};
  j["model"]["merges"] = json::array();
  for (const auto& [a, b] : std::vector<std::pair<std::string, std::string>>{
           {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"\u0120", "hello"}}) {
    j["model"]["merges"].push_back(json::array({a, b}));
  }
  return j;
}

TEST(Tokenizer, TinyTokenizerEncodes) {
  const Tokenizer tok = from_json(tiny_json());
  EXPECT_EQ(ids_str(tok.encode("hello hello")), "[10,11]");
  EXPECT_EQ(ids_str(tok.encode("hex")), "[7]");  // no "x" in the vocab and no unk token: dropped
}

struct BadCase {
  const char* what;
  std::function<void(json&)> mutate;
  const char* message;  // expected in the error, after "test.json: "
};

TEST(Tokenizer, MalformedFilesGiveOneClearError) {
  const std::vector<BadCase> cases = {
      {"top level", [](json& j) { j = json::array(); }, "top level: expected a JSON object"},
      {"version", [](json& j) { j["version"] = "2.0"; }, "version: unknown tokenizer.json version"},
      {"no model", [](json& j) { j.erase("model"); }, "model: missing"},
      {"model type", [](json& j) { j["model"]["type"] = "WordPiece"; }, "model.type: \"WordPiece\" is not supported"},
      {"no vocab", [](json& j) { j["model"].erase("vocab"); }, "model.vocab: missing"},
      {"vocab type", [](json& j) { j["model"]["vocab"] = json::array(); }, "model.vocab: expected an object"},
      {"id type", [](json& j) { j["model"]["vocab"]["h"] = "7"; }, "model.vocab[\"h\"]: expected an integer"},
      {"id negative", [](json& j) { j["model"]["vocab"]["h"] = -3; }, "model.vocab[\"h\"]: expected an integer in [0, 16777215]"},
      {"id too large", [](json& j) { j["model"]["vocab"]["h"] = int64_t(1) << 40; }, "model.vocab[\"h\"]: expected an integer in"},
      {"id duplicated", [](json& j) { j["model"]["vocab"]["h"] = 2; }, "model.vocab[\"h\"]: id 2 is also the id of \"e\""},
      {"merges type", [](json& j) { j["model"]["merges"] = "a b"; }, "model.merges: expected an array"},
      {"merge unknown", [](json& j) { j["model"]["merges"][3] = {"h", "zzz"}; }, "model.merges[3]: \"zzz\" is not in model.vocab"},
      {"merge result unknown", [](json& j) { j["model"]["merges"][0] = {"<|padding|>", "<|endoftext|>"}; }, "model.merges[0]: \"<|padding|><|endoftext|>\" is not in model.vocab"},
      {"merge string", [](json& j) { j["model"]["merges"][1] = "a b c"; }, "model.merges[1]: expected two tokens separated by one space"},
      {"merge pair", [](json& j) { j["model"]["merges"][1] = {"a"}; }, "model.merges[1]: expected a pair of tokens"},
      {"merge element", [](json& j) { j["model"]["merges"][2] = {"a", 5}; }, "model.merges[2][1]: expected a string"},
      {"unk", [](json& j) { j["model"]["unk_token"] = "<unk>"; }, "model.unk_token: \"<unk>\" is not in model.vocab"},
      {"dropout", [](json& j) { j["model"]["dropout"] = 0.1; }, "model.dropout: BPE dropout is not supported"},
      {"byte_fallback", [](json& j) { j["model"]["byte_fallback"] = true; }, "model.byte_fallback:"},
      {"prefix", [](json& j) { j["model"]["continuing_subword_prefix"] = "##"; }, "model.continuing_subword_prefix:"},
      {"added content", [](json& j) { j["added_tokens"][0]["content"] = 3; }, "added_tokens[0].content: expected a string"},
      {"added id", [](json& j) { j["added_tokens"][1].erase("id"); }, "added_tokens[1].id: missing"},
      {"added flag", [](json& j) { j["added_tokens"][1]["lstrip"] = "yes"; }, "added_tokens[1].lstrip: expected true or false"},
      {"normalizer", [](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; }, "normalizer: normalizer type \"Lowercase\" is not supported"},
      {"normalizer in sequence", [](json& j) { j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "Strip"}}}}}; }, "normalizer.normalizers[0]:"},
      {"no pre-tokenizer", [](json& j) { j["pre_tokenizer"] = nullptr; }, "pre_tokenizer: missing"},
      {"pre-tokenizer", [](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }, "pre_tokenizer: pre-tokenizer type \"Whitespace\" is not supported"},
      {"bad regex", [](json& j) {
         j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", "(ab"}}}, {"behavior", "Isolated"}, {"invert", false}}, j["pre_tokenizer"]}}};
       }, "pre_tokenizer.pretokenizers[0].pattern.Regex: the pattern does not compile"},
      {"split behavior", [](json& j) {
         j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Sideways"}, {"invert", false}}, j["pre_tokenizer"]}}};
       }, "pre_tokenizer.pretokenizers[0].behavior: unknown split behavior \"Sideways\""},
      {"post-processor", [](json& j) { j["post_processor"] = {{"type", "BertProcessing"}}; }, "post_processor: post-processor type \"BertProcessing\""},
      {"no decoder", [](json& j) { j.erase("decoder"); }, "decoder: missing"},
      {"decoder", [](json& j) { j["decoder"] = {{"type", "WordPiece"}}; }, "decoder: decoder type \"WordPiece\" is not supported"},
  };
  for (const BadCase& c : cases) {
    json j = tiny_json();
    c.mutate(j);
    try {
      from_json(j);
      ADD_FAILURE() << c.what << ": accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::BadInput) << c.what;
      EXPECT_NE(std::string(e.what()).find(std::string("test.json: ") + c.message), std::string::npos)
          << c.what << ": " << e.what();
    }
  }
}

TEST(Tokenizer, UnreadableFilesNameThePath) {
  try {
    Tokenizer::from_file("/no/such/dir/tokenizer.json");
    ADD_FAILURE() << "accepted a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/no/such/dir/tokenizer.json"), std::string::npos) << e.what();
  }
  try {
    Tokenizer::from_json_text("{\"model\": ", "broken.json");
    ADD_FAILURE() << "accepted broken JSON";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("broken.json: not valid JSON"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mambacpp
