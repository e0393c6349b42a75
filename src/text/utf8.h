// UTF-8 handling for the tokenizer: validation, replacement of invalid bytes, decoding, and the
// Unicode character classes that HF tokenizers' regexes use (\p{L}, \p{N}, \s, \w).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mambacpp::text {

// Length of the well-formed UTF-8 sequence starting at s[i] (1 to 4), or 0 if the bytes there do
// not start one (Unicode table 3-7: no overlongs, no surrogates, nothing above U+10FFFF).
size_t valid_sequence_length(std::string_view s, size_t i);

bool is_valid_utf8(std::string_view s);

// `s` with every maximal ill-formed subsequence replaced by U+FFFD, the way Rust's
// String::from_utf8_lossy and Python's errors="replace" do it.
std::string replace_invalid_utf8(std::string_view s);

// Number of bytes at the end of `s` that begin a well-formed sequence without finishing it
// (0 to 3): a stream cut there may still be completed by the bytes that follow.
size_t unfinished_suffix_length(std::string_view s);

// The code point at s[i], which must start a well-formed sequence; `len` receives its length.
char32_t decode_at(std::string_view s, size_t i, size_t& len);

void append_utf8(std::string& out, char32_t cp);

// The classes of the GPT-2 pre-tokenizer regex: \p{L}, \p{N}, \s and everything else. Taken from
// utf8proc's Unicode tables (general category; \s is White_Space, i.e. Zs, Zl, Zp, U+0009..U+000D
// and U+0085), which agree with HF tokenizers' Oniguruma on every code point assigned up to
// Unicode 15.0 (checked on all of them against tokenizers 0.23.2, see docs/TOKENIZER.md).
enum class CharClass : uint8_t { Letter, Number, Space, Other };
CharClass char_class(char32_t cp);

inline bool is_space(char32_t cp) { return char_class(cp) == CharClass::Space; }

// Rust regex's \w: Alphabetic, marks, decimal digits, connector punctuation, Join_Control
// (Alphabetic as L*, Nl and the few symbols that are Other_Alphabetic).
bool is_word_char(char32_t cp);

}  // namespace mambacpp::text
