// PyTorch's zip checkpoint format (torch.save since 1.6): ARCHIVE/data.pkl is a pickled dict of
// tensors, ARCHIVE/data/<key> the raw little-endian storages. The unpickler implements only the
// opcodes and globals a state dict uses (torch._utils._rebuild_tensor_v2, torch.*Storage,
// collections.OrderedDict); anything else is refused. It never executes anything.
#pragma once

#include <filesystem>

#include "io/safetensors.h"

namespace mambacpp {

// Tensors come back contiguous: views of the storage they live in when they are laid out
// contiguously in it (a storage shared by two tensors, like a tied lm_head, is read once),
// otherwise owned copies.
TensorMap read_torch_zip(const std::filesystem::path& path);

// The pickle program alone, for the fuzz target: returns (name -> storage key, dtype, shape,
// strides, offset) records without touching storages. Throws BadInput on anything unsupported.
// Every record is checked to lie within its storage (storage_numel elements, as the pickle
// states it; the zip reader then checks the storage file holds that many).
struct PickledTensor {
  std::string storage_key;
  DType dtype;
  Shape shape;
  std::vector<int64_t> strides;
  int64_t storage_offset = 0;  // in elements
  int64_t storage_numel = 0;   // elements of the whole storage
};
std::map<std::string, PickledTensor> parse_state_dict_pickle(const std::byte* bytes, size_t size,
                                                             const std::string& name);

}  // namespace mambacpp
