// libFuzzer: the state-dict unpickler over arbitrary bytes. Only a BadInput may come out, and
// every record it returns must lie inside the storage it names.
#include <cstddef>
#include <cstdint>

#include "io/torch_pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mambacpp;
  try {
    const auto records = parse_state_dict_pickle(reinterpret_cast<const std::byte*>(data), size, "fuzz.pkl");
    for (const auto& [name, t] : records) {
      if (t.shape.size() != t.strides.size() || t.storage_offset < 0 || t.storage_numel < 0) __builtin_trap();
      int64_t last = t.storage_offset;
      bool empty = false;
      for (size_t i = 0; i < t.shape.size(); ++i) {
        empty = empty || t.shape[i] == 0;
        if (t.shape[i] > 0) last += (t.shape[i] - 1) * t.strides[i];
      }
      if (!empty && last >= t.storage_numel) __builtin_trap();
    }
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::BadInput) __builtin_trap();
  }
  return 0;
}
