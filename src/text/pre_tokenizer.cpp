#include "text/pre_tokenizer.h"

#include <algorithm>
#include <array>
#include <optional>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"
#include "text/utf8.h"

namespace mambacpp::text {
namespace {

// ---- The GPT-2 matcher ----------------------------------------------------------------------

constexpr std::array<CharClass, 128> make_ascii_classes() {
  std::array<CharClass, 128> t{};
  for (int c = 0; c < 128; ++c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
      t[size_t(c)] = CharClass::Letter;
    } else if (c >= '0' && c <= '9') {
      t[size_t(c)] = CharClass::Number;
    } else if (c == ' ' || (c >= 0x09 && c <= 0x0D)) {
      t[size_t(c)] = CharClass::Space;
    } else {
      t[size_t(c)] = CharClass::Other;
    }
  }
  return t;
}
constexpr std::array<CharClass, 128> kAsciiClasses = make_ascii_classes();

struct Char {
  CharClass cls;
  size_t len;
};

inline Char char_at(std::string_view s, size_t i) {
  const auto b = static_cast<uint8_t>(s[i]);
  if (b < 0x80) return {kAsciiClasses[b], 1};
  size_t len = 0;
  const char32_t cp = decode_at(s, i, len);
  return {char_class(cp), len};
}

// End of the run of characters of class `cls` that starts at `i`.
size_t run_end(std::string_view s, size_t i, CharClass cls) {
  while (i < s.size()) {
    const Char c = char_at(s, i);
    if (c.cls != cls) break;
    i += c.len;
  }
  return i;
}

// Length of 's 't 're 've 'm 'll 'd at s[i] == '\'' (case-sensitive, as in GPT-2), or 0.
size_t contraction_length(std::string_view s, size_t i) {
  if (i + 1 >= s.size()) return 0;
  const char a = s[i + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 >= s.size()) return 0;
  const char b = s[i + 2];
  return (a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l') ? 3 : 0;
}

// End of the match of kGpt2Pattern that starts at `i`; the alternatives in the pattern's order.
size_t gpt2_match_end(std::string_view s, size_t i) {
  if (s[i] == '\'') {
    if (const size_t n = contraction_length(s, i)) return i + n;
  }
  // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": an optional space, then a run of one class.
  if (s[i] == ' ' && i + 1 < s.size()) {
    const Char next = char_at(s, i + 1);
    if (next.cls != CharClass::Space) return run_end(s, i + 1 + next.len, next.cls);
  }
  const Char first = char_at(s, i);
  if (first.cls != CharClass::Space) return run_end(s, i + first.len, first.cls);
  // "\s+(?!\S)|\s+": a whitespace run followed by a non-space gives up its last character
  // (which then prefixes the next word) unless that would leave the match empty.
  size_t last = i, j = i;
  while (j < s.size()) {
    const Char c = char_at(s, j);
    if (c.cls != CharClass::Space) break;
    last = j;
    j += c.len;
  }
  return j == s.size() || last == i ? j : last;
}

// ---- Split behaviours -----------------------------------------------------------------------

struct Part {
  Span span;
  bool is_match;
};

// The matches and the gaps between them, covering all of `text`, as HF's Pattern::find_matches.
void tile(std::string_view text, const std::vector<Span>& matches, bool invert,
          std::vector<Part>& parts) {
  parts.clear();
  size_t prev = 0;
  for (const Span& m : matches) {
    if (prev != m.begin) parts.push_back({{prev, m.begin}, invert});
    parts.push_back({m, !invert});
    prev = m.end;
  }
  if (prev != text.size()) parts.push_back({{prev, text.size()}, invert});
}

// HF's NormalizedString::split: which parts are kept, and which are glued to a neighbour.
void apply_behavior(SplitBehavior behavior, std::vector<Part>& parts, std::vector<Span>& kept) {
  kept.clear();
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (const Part& p : parts) kept.push_back(p.span);
      break;
    case SplitBehavior::Removed:
      for (const Part& p : parts) {
        if (!p.is_match) kept.push_back(p.span);
      }
      break;
    case SplitBehavior::Contiguous:
      for (const Part& p : parts) {
        if (p.is_match == previous_match && !kept.empty()) {
          kept.back().end = p.span.end;
        } else {
          kept.push_back(p.span);
        }
        previous_match = p.is_match;
      }
      break;
    case SplitBehavior::MergedWithPrevious:
      for (const Part& p : parts) {
        if (p.is_match && !previous_match && !kept.empty()) {
          kept.back().end = p.span.end;
        } else {
          kept.push_back(p.span);
        }
        previous_match = p.is_match;
      }
      break;
    case SplitBehavior::MergedWithNext:
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) {
          kept.back().begin = it->span.begin;
        } else {
          kept.push_back(it->span);
        }
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
}

}  // namespace

void gpt2_matches(std::string_view text, std::vector<Span>& out) {
  for (size_t i = 0; i < text.size();) {
    const size_t end = gpt2_match_end(text, i);
    out.push_back({i, end});
    i = end;
  }
}

// ---- PCRE2 ----------------------------------------------------------------------------------

struct Regex::Code {
  pcre2_code* code = nullptr;
  ~Code() { pcre2_code_free(code); }
};

Regex::Regex(std::string_view pattern, bool literal, const std::string& where)
    : code_(std::make_unique<Code>()) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  // PCRE2_LITERAL refuses PCRE2_UCP (which only changes what classes such as \s mean).
  const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  code_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                              options, &error, &offset, nullptr);
  if (!code_->code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    fail(where, ": the pattern does not compile (at offset ", offset, ": ",
         reinterpret_cast<const char*>(message), ")");
  }
  pcre2_jit_compile(code_->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if it fails
}

Regex::~Regex() = default;

void Regex::find_matches(std::string_view text, std::vector<Span>& out) const {
  using MatchData = std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)>;
  const MatchData md(pcre2_match_data_create_from_pattern(code_->code, nullptr),
                     &pcre2_match_data_free);
  MAMBACPP_CHECK(md != nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  std::optional<size_t> last_match_end;
  size_t pos = 0;
  while (pos <= text.size()) {
    const int rc =
        pcre2_match(code_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof message);
      fail("pre-tokenizer regex failed on the input: ", reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(md.get());
    const Span m{ovector[0], ovector[1]};
    if (m.begin == m.end && last_match_end == m.end) {
      if (pos == text.size()) break;
      size_t len = 1;
      decode_at(text, pos, len);
      pos += len;
      continue;
    }
    out.push_back(m);
    pos = m.end;
    last_match_end = m.end;
  }
}

// ---- The pipeline ---------------------------------------------------------------------------

void PreTokenizer::split(std::string_view text, PreTokenizerScratch& scratch,
                         std::vector<std::string_view>& words) const {
  if (splits_.empty()) {
    byte_level(text, scratch, words);
    return;
  }
  std::vector<Part> parts;
  std::vector<Span> kept;
  scratch.pieces.assign(1, text);
  for (const SplitStep& step : splits_) {
    scratch.next_pieces.clear();
    for (const std::string_view piece : scratch.pieces) {
      scratch.matches.clear();
      if (step.regex) {
        step.regex->find_matches(piece, scratch.matches);
      } else {
        gpt2_matches(piece, scratch.matches);
      }
      tile(piece, scratch.matches, step.invert, parts);
      apply_behavior(step.behavior, parts, kept);
      for (const Span& s : kept) {
        if (s.end > s.begin) scratch.next_pieces.push_back(piece.substr(s.begin, s.end - s.begin));
      }
    }
    std::swap(scratch.pieces, scratch.next_pieces);
  }
  for (const std::string_view piece : scratch.pieces) byte_level(piece, scratch, words);
}

void PreTokenizer::byte_level(std::string_view piece, PreTokenizerScratch& scratch,
                              std::vector<std::string_view>& words) const {
  if (add_prefix_space_ && piece.front() != ' ') {
    std::string& prefixed = scratch.owned.emplace_back(" ");
    prefixed.append(piece);
    piece = prefixed;
  }
  if (!use_regex_) {
    words.push_back(piece);
    return;
  }
  scratch.matches.clear();
  gpt2_matches(piece, scratch.matches);
  for (const Span& m : scratch.matches) words.push_back(piece.substr(m.begin, m.end - m.begin));
}

}  // namespace mambacpp::text
