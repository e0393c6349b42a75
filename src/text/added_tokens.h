// Added tokens (special tokens such as <|endoftext|> and user-added ones) are cut out of the
// text before anything else sees it, as HF's AddedVocabulary does: leftmost-longest matches,
// then each token's flags (single_word, lstrip, rstrip).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mambacpp::text {

struct AddedToken {
  std::string pattern;  // the text to find (the normalized content for normalized tokens)
  int32_t id = 0;
  bool single_word = false;  // only when not inside a word
  bool lstrip = false;       // swallows the whitespace on its left
  bool rstrip = false;       // swallows the whitespace on its right
};

struct AddedMatch {
  size_t begin, end;  // includes the whitespace stripped by lstrip / rstrip
  int32_t id;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens);
  bool empty() const { return tokens_.empty(); }

  // Appends the tokens found in `text` (valid UTF-8), left to right. As in HF, a match can
  // reach back over whitespace already taken by the previous match's rstrip.
  void find(std::string_view text, std::vector<AddedMatch>& out) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;  // sorted by byte
    int32_t token = -1;  // index into tokens_ of the token ending here
  };
  // Index of the longest token starting at text[i], or -1; `length` receives its length.
  int32_t longest_at(std::string_view text, size_t i, size_t& length) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> nodes_;                // a byte trie; nodes_[0] is the root
  std::array<int32_t, 256> root_next_{};  // the root's children, by byte (0 = none)
};

}  // namespace mambacpp::text
