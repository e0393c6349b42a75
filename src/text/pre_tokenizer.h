// Pre-tokenization: cutting normalized text into the words that BPE encodes one by one, as HF
// tokenizers' Split and ByteLevel pre-tokenizers (and a Sequence of them) do.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mambacpp::text {

// GPT-2's pre-tokenizer regex, as tokenizer.json files spell it.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct Span {
  size_t begin, end;
};

// Appends the matches of kGpt2Pattern in `text` (valid UTF-8) to `out`. A hand-written matcher:
// every character starts a match, so the matches tile the text; tests check it against PCRE2.
void gpt2_matches(std::string_view text, std::vector<Span>& out);

// A PCRE2 pattern (UTF, Unicode properties), JIT-compiled when possible. find_matches may be
// called from several threads at once.
class Regex {
 public:
  // `literal`: match `pattern` as plain text. Throws BadInput naming `where` if it does not
  // compile.
  Regex(std::string_view pattern, bool literal, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the non-overlapping matches in `text` (valid UTF-8), left to right, with
  // Oniguruma's (and Rust's) rule for empty matches: one that ends where the previous match
  // ended is skipped.
  void find_matches(std::string_view text, std::vector<Span>& out) const;

 private:
  struct Code;
  std::unique_ptr<Code> code_;
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// One Split pre-tokenizer: a pattern (the GPT-2 matcher when it is kGpt2Pattern, else PCRE2),
// what to do with the matched delimiters, and whether matches and gaps swap roles.
struct SplitStep {
  std::shared_ptr<const Regex> regex;  // null: kGpt2Pattern
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
};

// Working memory of one encode call: pieces that had to be rewritten (a prefix space added)
// live here so that string_views into them stay valid.
struct PreTokenizerScratch {
  std::deque<std::string> owned;
  std::vector<Span> matches;
  std::vector<std::string_view> pieces, next_pieces;
};

// Split steps in order, then ByteLevel (prefix space, GPT-2 regex); ByteLevel's byte mapping
// itself is left to the BPE model, which works on raw bytes.
class PreTokenizer {
 public:
  void add_split(SplitStep step) { splits_.push_back(std::move(step)); }
  void set_byte_level(bool add_prefix_space, bool use_regex) {
    add_prefix_space_ = add_prefix_space;
    use_regex_ = use_regex;
  }

  // Appends the non-empty words of `text` (valid UTF-8) to `words`; they view `text` or
  // `scratch.owned`.
  void split(std::string_view text, PreTokenizerScratch& scratch,
             std::vector<std::string_view>& words) const;

 private:
  void byte_level(std::string_view piece, PreTokenizerScratch& scratch,
                  std::vector<std::string_view>& words) const;

  std::vector<SplitStep> splits_;
  bool add_prefix_space_ = false;
  bool use_regex_ = true;
};

}  // namespace mambacpp::text
