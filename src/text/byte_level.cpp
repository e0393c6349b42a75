#include "text/byte_level.h"

#include <array>

#include "text/utf8.h"

namespace mambacpp::text {
namespace {

struct ByteLevelTables {
  std::array<char32_t, 256> to_char{};
  std::array<int, 512> to_byte{};  // indexed by character; -1 where no byte maps to it
};

// Bytes in '!'..'~', 0xA1..0xAC and 0xAE..0xFF keep their value; the others, in increasing
// order, take U+0100, U+0101, ...
ByteLevelTables make_tables() {
  ByteLevelTables t;
  t.to_byte.fill(-1);
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool kept = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    t.to_char[size_t(b)] = kept ? char32_t(b) : next++;
    t.to_byte[t.to_char[size_t(b)]] = b;
  }
  return t;
}

const ByteLevelTables& tables() {
  static const ByteLevelTables t = make_tables();
  return t;
}

}  // namespace

char32_t byte_to_char(unsigned char b) { return tables().to_char[b]; }

std::string to_byte_level(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) append_utf8(out, byte_to_char(static_cast<unsigned char>(c)));
  return out;
}

std::optional<std::string> from_byte_level(std::string_view token) {
  const auto& to_byte = tables().to_byte;
  std::string out;
  out.reserve(token.size());
  for (size_t i = 0; i < token.size();) {
    size_t len = 0;
    const char32_t cp = decode_at(token, i, len);
    if (cp >= to_byte.size() || to_byte[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(to_byte[cp]));
    i += len;
  }
  return out;
}

}  // namespace mambacpp::text
