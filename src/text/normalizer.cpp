#include "text/normalizer.h"

#include <cstdlib>
#include <memory>

#include <utf8proc.h>

#include "core/error.h"

namespace mambacpp::text {
namespace {

utf8proc_option_t options_of(NormalForm form) {
  switch (form) {
    case NormalForm::NFC: return utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    case NormalForm::NFD: return utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
    case NormalForm::NFKC:
      return utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
    case NormalForm::NFKD:
      return utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
  }
  return utf8proc_option_t(0);
}

bool is_ascii(std::string_view s) {
  for (const char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

void append_normalized(std::string_view text, NormalForm form, std::string& out) {
  utf8proc_uint8_t* mapped = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          utf8proc_ssize_t(text.size()), &mapped, options_of(form));
  const std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(mapped, &std::free);
  // The input is valid UTF-8 and no option rejects anything, so utf8proc cannot fail here.
  MAMBACPP_CHECK(n >= 0);
  out.append(reinterpret_cast<const char*>(mapped), size_t(n));
}

// utf8proc 2.8 composes a Hangul LV syllable with a following U+11A7 (the T base, which is no
// trailing consonant) and so deletes the U+11A7. U+11A7 is a starter that composes with nothing,
// so normalizing the text between occurrences on its own gives the right result.
std::string normalize(std::string_view text, NormalForm form) {
  static constexpr std::string_view kHangulTBase = "\xE1\x86\xA7";
  std::string out;
  out.reserve(text.size());
  size_t begin = 0;
  for (size_t at; (at = text.find(kHangulTBase, begin)) != std::string_view::npos;) {
    append_normalized(text.substr(begin, at - begin), form, out);
    out.append(kHangulTBase);
    begin = at + kHangulTBase.size();
  }
  append_normalized(text.substr(begin), form, out);
  return out;
}

}  // namespace

std::string_view Normalizer::apply(std::string_view text, std::string& storage) const {
  if (forms_.empty() || is_ascii(text)) return text;  // every normal form leaves ASCII alone
  std::string current(text);
  for (const NormalForm form : forms_) current = normalize(current, form);
  storage = std::move(current);
  return storage;
}

}  // namespace mambacpp::text
