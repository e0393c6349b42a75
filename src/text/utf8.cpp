#include "text/utf8.h"

#include <cstring>

#include <utf8proc.h>

namespace mambacpp::text {
namespace {

struct SequenceCheck {
  size_t needed;   // length the lead byte announces (0: not a lead byte)
  size_t matched;  // bytes from s[i] on that fit a well-formed sequence (its maximal subpart)
};

// Unicode table 3-7: the range allowed for the second byte depends on the lead byte; later
// bytes are plain continuation bytes.
SequenceCheck check_sequence(std::string_view s, size_t i) {
  const auto lead = static_cast<uint8_t>(s[i]);
  if (lead < 0x80) return {1, 1};
  size_t needed = 0;
  uint8_t lo = 0x80, hi = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    needed = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    needed = 3;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    needed = 4;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  } else {
    return {0, 0};
  }
  size_t matched = 1;
  for (; matched < needed && i + matched < s.size(); ++matched) {
    const auto b = static_cast<uint8_t>(s[i + matched]);
    if (b < lo || b > hi) break;
    lo = 0x80;
    hi = 0xBF;
  }
  return {needed, matched};
}

// Bytes s[i, i+8) are all ASCII.
bool ascii_word_at(std::string_view s, size_t i) {
  uint64_t w;
  std::memcpy(&w, s.data() + i, 8);
  return (w & 0x8080808080808080ULL) == 0;
}

}  // namespace

size_t valid_sequence_length(std::string_view s, size_t i) {
  const SequenceCheck c = check_sequence(s, i);
  return c.needed != 0 && c.matched == c.needed ? c.needed : 0;
}

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (i + 8 <= s.size() && ascii_word_at(s, i)) {
      i += 8;
      continue;
    }
    const size_t n = valid_sequence_length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string replace_invalid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 16);
  size_t i = 0;
  while (i < s.size()) {
    const SequenceCheck c = check_sequence(s, i);
    if (c.needed != 0 && c.matched == c.needed) {
      out.append(s.substr(i, c.needed));
      i += c.needed;
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD
      i += c.matched == 0 ? 1 : c.matched;
    }
  }
  return out;
}

size_t unfinished_suffix_length(std::string_view s) {
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const size_t i = s.size() - back;
    if ((static_cast<uint8_t>(s[i]) & 0xC0) == 0x80) continue;  // a continuation byte
    const SequenceCheck c = check_sequence(s, i);
    return c.needed > back && c.matched == back ? back : 0;
  }
  return 0;
}

char32_t decode_at(std::string_view s, size_t i, size_t& len) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data() + i);
  if (p[0] < 0x80) {
    len = 1;
    return p[0];
  }
  if (p[0] < 0xE0) {
    len = 2;
    return char32_t(p[0] & 0x1F) << 6 | (p[1] & 0x3F);
  }
  if (p[0] < 0xF0) {
    len = 3;
    return char32_t(p[0] & 0x0F) << 12 | char32_t(p[1] & 0x3F) << 6 | (p[2] & 0x3F);
  }
  len = 4;
  return char32_t(p[0] & 0x07) << 18 | char32_t(p[1] & 0x3F) << 12 | char32_t(p[2] & 0x3F) << 6 |
         (p[3] & 0x3F);
}

void append_utf8(std::string& out, char32_t cp) {
  utf8proc_uint8_t buf[4];
  const auto n = utf8proc_encode_char(utf8proc_int32_t(cp), buf);
  out.append(reinterpret_cast<const char*>(buf), size_t(n));
}

CharClass char_class(char32_t cp) {
  switch (utf8proc_category(utf8proc_int32_t(cp))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
      return CharClass::Letter;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return CharClass::Number;
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
      return CharClass::Space;
    default:
      return (cp >= 0x09 && cp <= 0x0D) || cp == 0x85 ? CharClass::Space : CharClass::Other;
  }
}

bool is_word_char(char32_t cp) {
  if (cp == 0x200C || cp == 0x200D) return true;  // Join_Control
  // The symbols (So) that are Other_Alphabetic: circled and squared Latin letters.
  if ((cp >= 0x24B6 && cp <= 0x24E9) || (cp >= 0x1F130 && cp <= 0x1F149) ||
      (cp >= 0x1F150 && cp <= 0x1F169) || (cp >= 0x1F170 && cp <= 0x1F189)) {
    return true;
  }
  switch (utf8proc_category(utf8proc_int32_t(cp))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

}  // namespace mambacpp::text
