// The GPT-2 byte <-> character mapping of byte-level BPE: every byte gets a printable character
// (printable Latin-1 bytes map to themselves, the other 68 to U+0100 and up), so that vocab
// entries are strings. Encoding maps the bytes of the text; decoding maps characters back.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace mambacpp::text {

// The character byte `b` becomes.
char32_t byte_to_char(unsigned char b);

// `bytes` written in byte-level characters (UTF-8 encoded), as the vocab spells tokens.
std::string to_byte_level(std::string_view bytes);

// The bytes a byte-level token stands for, or nullopt if one of its characters is not in the
// mapping (HF's ByteLevel decoder then keeps the token's own UTF-8 bytes). `token` must be valid
// UTF-8.
std::optional<std::string> from_byte_level(std::string_view token);

}  // namespace mambacpp::text
