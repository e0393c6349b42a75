// safetensors: an 8-byte little-endian header length, a JSON header, then the raw data.
// The reader maps the file and validates every field before any tensor is touched; tensors it
// returns are zero-copy views that keep the mapping alive. The writer is atomic.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace mambacpp {

using TensorMap = std::map<std::string, Tensor>;

struct SafetensorsFile {
  TensorMap tensors;
  std::map<std::string, std::string> metadata;  // "__metadata__", if any
};

SafetensorsFile read_safetensors(const std::filesystem::path& path);
// Same validation over bytes in memory (what the fuzz target drives); `name` is for messages.
// The returned tensors view `bytes`, which must outlive them.
SafetensorsFile parse_safetensors(const std::byte* bytes, size_t size, const std::string& name);

// Writes to a temporary file beside `path`, fsyncs, renames over `path`: no partial file ever.
void write_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace mambacpp
