// libFuzzer: the safetensors parser over arbitrary bytes. Only a BadInput may come out; every
// tensor it accepts is read whole, so ASan sees any view that strays outside the input.
#include <cstddef>
#include <cstdint>

#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto f = mambacpp::parse_safetensors(reinterpret_cast<const std::byte*>(data), size, "fuzz.safetensors");
    volatile uint8_t sink = 0;
    for (const auto& [name, t] : f.tensors) {
      const auto* p = static_cast<const uint8_t*>(t.raw());
      for (size_t i = 0; i < t.nbytes(); ++i) sink = sink ^ p[i];
    }
  } catch (const mambacpp::Error& e) {
    if (e.kind() != mambacpp::ErrorKind::BadInput) __builtin_trap();
  }
  return 0;
}
