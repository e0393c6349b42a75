// libFuzzer: config.json bytes -> strict JSON parse -> parse_config. Only a BadInput may come
// out. Whatever parses must survive the trip through to_hf_json unchanged in shape.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "io/config.h"
#include "io/json_fields.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mambacpp;
  try {
    const auto j = parse_json(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
    const MambaConfig c = parse_config(j, "fuzz.json");
    const MambaConfig back = parse_config(to_hf_json(c), "roundtrip");
    if (back.vocab_size != c.vocab_size || back.d_model != c.d_model || back.n_layer != c.n_layer ||
        back.d_inner != c.d_inner || back.d_state != c.d_state || back.d_conv != c.d_conv ||
        back.dt_rank != c.dt_rank || back.tie_embeddings != c.tie_embeddings || back.falcon() != c.falcon() ||
        back.eos_token_id != c.eos_token_id)
      __builtin_trap();
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::BadInput) __builtin_trap();
  }
  return 0;
}
