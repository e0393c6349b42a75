// libFuzzer: bytes as text -> encode -> decode, with the test fixture (tests/data/tokenizer)
// and with a variant that adds an NFC normalizer, added tokens with flags and a PCRE2 Split
// pre-tokenizer; the first byte picks which. With the fixture, decode(encode(x)) is x for valid
// UTF-8 and x with U+FFFD for the invalid bytes otherwise; with the variant, encoding is stable:
// encode(decode(encode(x))) == encode(x).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

namespace {

using mambacpp::Tokenizer;

nlohmann::json fixture() {
  const auto path = std::filesystem::path(__FILE__).parent_path() / "../tests/data/tokenizer/tokenizer.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "encode_decode_fuzz: cannot read %s\n", path.c_str());
    std::abort();
  }
  return nlohmann::json::parse(std::string(std::istreambuf_iterator<char>(in), {}));
}

Tokenizer variant() {
  nlohmann::json j = fixture();
  j["normalizer"] = {{"type", "NFC"}};
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"},
         {"pattern", {{"Regex", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
         {"behavior", "Isolated"},
         {"invert", false}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
  const auto add = [&](const char* content, bool single_word, bool strip, bool normalized) {
    j["added_tokens"].push_back({{"id", 2000 + int(j["added_tokens"].size())}, {"content", content},
                                 {"single_word", single_word}, {"lstrip", strip}, {"rstrip", strip},
                                 {"normalized", normalized}, {"special", !normalized}});
  };
  add("<mask>", false, true, false);
  // Normalized to U+1E0A; not Latin-1, whose characters HF's ByteLevel decoder would take for
  // bytes (it does, and so would we).
  add("D\u0307", false, false, true);
  add("word", true, false, true);
  return Tokenizer::from_json_text(j.dump(), "variant.json");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Tokenizer plain = Tokenizer::from_json_text(fixture().dump(), "tokenizer.json");
  static const Tokenizer rich = variant();
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] & 1) {
    const auto ids = rich.encode(text);
    if (rich.encode(rich.decode(ids)) != ids) __builtin_trap();
  } else {
    const std::string expected = mambacpp::text::replace_invalid_utf8(text);
    if (plain.decode(plain.encode(text)) != expected) __builtin_trap();
  }
  return 0;
}
