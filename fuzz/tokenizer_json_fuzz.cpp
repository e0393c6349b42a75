// libFuzzer: tokenizer.json bytes -> Tokenizer::from_json_text. Only a BadInput may come out.
// Whatever loads must encode a few texts and decode its own ids without complaint.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "text/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mambacpp;
  try {
    const Tokenizer tok =
        Tokenizer::from_json_text(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
    for (const char* text : {"Hello, world!  it's 42 <|endoftext|> caf\u00e9 \U0001F642", "", " \n\t "}) {
      tok.decode(tok.encode(text));
    }
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::BadInput) __builtin_trap();
  }
  return 0;
}
