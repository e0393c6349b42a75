// A checkpoint folder as users have them: config.json plus the weights in one of
//  - model.safetensors, or shards named by model.safetensors.index.json;
//  - pytorch_model.bin (PyTorch's zip of a pickled state dict: mamba_ssm's releases).
// Tensor names come back as in the file; the model layer maps and validates them.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "io/config.h"
#include "io/safetensors.h"

namespace mambacpp {

struct Checkpoint {
  std::filesystem::path dir;
  MambaConfig config;
  TensorMap tensors;
  std::string weights_file;                     // what was read, for messages
  std::optional<std::filesystem::path> tokenizer;  // dir/tokenizer.json if present
};

Checkpoint read_checkpoint(const std::filesystem::path& dir);

// Writes an HF folder (config.json, model.safetensors, generation_config.json) atomically: into a
// temporary sibling folder, then renamed into place. Tensor names must be HF's.
void write_hf_checkpoint(const std::filesystem::path& dir, const MambaConfig& config, const TensorMap& tensors,
                         const std::optional<std::filesystem::path>& tokenizer_json);

}  // namespace mambacpp
