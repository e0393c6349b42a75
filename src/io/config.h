// The Mamba-1 hyperparameters, read from either config.json dialect:
//  - Hugging Face MambaConfig / FalconMambaConfig ("model_type": "mamba" | "falcon_mamba");
//  - mamba_ssm's own (d_model, n_layer, ssm_cfg, pad_vocab_size_multiple, tie_embeddings).
// Everything is validated here; a bad or unsupported value is one BadInput naming the file and key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace mambacpp {

enum class ConfigDialect { HuggingFace, MambaSsm };

struct MambaConfig {
  std::string model_type = "mamba";  // "mamba" or "falcon_mamba"
  int64_t vocab_size = 0;            // rows of the embedding (mamba_ssm: already padded)
  int64_t d_model = 0;               // hidden_size
  int64_t n_layer = 0;               // num_hidden_layers
  int64_t d_state = 16;              // state_size (N)
  int64_t d_inner = 0;               // intermediate_size = expand * d_model (E)
  int64_t d_conv = 4;                // conv_kernel (W)
  int64_t dt_rank = 0;               // time_step_rank (R); "auto" = ceil(d_model / 16)
  bool use_bias = false;             // in_proj / out_proj bias
  bool use_conv_bias = true;
  double norm_eps = 1e-5;            // layer_norm_epsilon
  double mixer_rms_eps = 1e-6;       // falcon_mamba only: weightless RMSNorm on dt, B, C
  bool tie_embeddings = true;
  bool residual_in_fp32 = true;
  std::optional<int64_t> bos_token_id, eos_token_id, pad_token_id;
  // Initialisation ranges (used by training; kept so checkpoints round-trip).
  double time_step_min = 0.001, time_step_max = 0.1, time_step_floor = 1e-4;
  ConfigDialect dialect = ConfigDialect::HuggingFace;

  bool falcon() const { return model_type == "falcon_mamba"; }
};

// Parses and validates; `source` names the file in error messages.
MambaConfig parse_config(const nlohmann::json& j, const std::string& source);
MambaConfig read_config(const std::filesystem::path& config_json);
// The shape of a published Mamba-1 model ("130m", "370m": state-spaces/mamba-*-hf configs), for
// random-weight benchmarks and tests; an unknown name is a BadInput listing the known ones.
MambaConfig published_shape(const std::string& name);
// HF MambaConfig JSON (what transformers' from_pretrained reads).
nlohmann::json to_hf_json(const MambaConfig& c);

}  // namespace mambacpp
