#include "text/added_tokens.h"

#include <algorithm>

#include "text/utf8.h"

namespace mambacpp::text {
namespace {

// The code point that ends s (non-empty, valid UTF-8).
char32_t last_char(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  size_t len = 0;
  return decode_at(s, i, len);
}

char32_t first_char(std::string_view s) {
  size_t len = 0;
  return decode_at(s, 0, len);
}

// Start of the whitespace that ends s (HF: the match of \s*$).
size_t trailing_space_start(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t i = end - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    size_t len = 0;
    if (!is_space(decode_at(s, i, len))) break;
    end = i;
  }
  return end;
}

// Length of the whitespace that starts s (HF: the match of ^\s*).
size_t leading_space_length(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t len = 0;
    if (!is_space(decode_at(s, i, len))) break;
    i += len;
  }
  return i;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  nodes_.emplace_back();
  for (size_t t = 0; t < tokens_.size(); ++t) {
    int32_t node = 0;
    for (const char ch : tokens_[t].pattern) {
      const auto c = static_cast<unsigned char>(ch);
      auto& children = nodes_[size_t(node)].children;
      const auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(c, 0),
                                       [](const auto& a, const auto& b) { return a.first < b.first; });
      if (it != children.end() && it->first == c) {
        node = it->second;
      } else {
        const auto child = int32_t(nodes_.size());
        children.insert(it, {c, child});
        nodes_.emplace_back();
        node = child;
      }
    }
    nodes_[size_t(node)].token = int32_t(t);  // a later token with the same text wins
  }
  for (const auto& [c, child] : nodes_[0].children) root_next_[c] = child;
}

int32_t AddedTokenMatcher::longest_at(std::string_view text, size_t i, size_t& length) const {
  int32_t node = root_next_[static_cast<unsigned char>(text[i])];
  int32_t best = -1;
  for (size_t j = i + 1; node != 0; ++j) {
    if (nodes_[size_t(node)].token >= 0) {
      best = nodes_[size_t(node)].token;
      length = j - i;
    }
    if (j == text.size()) break;
    const auto c = static_cast<unsigned char>(text[j]);
    const auto& children = nodes_[size_t(node)].children;
    const auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(c, 0),
                                     [](const auto& a, const auto& b) { return a.first < b.first; });
    node = it != children.end() && it->first == c ? it->second : 0;
  }
  return best;
}

void AddedTokenMatcher::find(std::string_view text, std::vector<AddedMatch>& out) const {
  if (tokens_.empty()) return;
  size_t taken = 0;  // end of the last accepted match (HF's start_offset)
  size_t pos = 0;
  while (pos < text.size()) {
    if (root_next_[static_cast<unsigned char>(text[pos])] == 0) {  // the common case: no token here
      ++pos;
      continue;
    }
    size_t length = 0;
    const int32_t t = longest_at(text, pos, length);
    if (t < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[size_t(t)];
    size_t begin = pos, end = pos + length;
    pos = end;  // the search resumes after the match, whatever the flags decide below
    if (token.single_word) {
      const bool space_before = begin == 0 || !is_word_char(last_char(text.substr(0, begin)));
      const bool space_after = end == text.size() || !is_word_char(first_char(text.substr(end)));
      if (!space_before || !space_after) continue;
    }
    if (token.lstrip) begin = std::max(trailing_space_start(text.substr(0, begin)), taken);
    if (token.rstrip) end += leading_space_length(text.substr(end));
    out.push_back({begin, end, token.id});
    taken = end;
  }
}

}  // namespace mambacpp::text
