#include "io/config.h"

#include <cmath>

#include "io/json_fields.h"

namespace mambacpp {

using nlohmann::json;

namespace {

constexpr int64_t kMaxSize = (int64_t(1) << 31) - 1;  // any dimension or count
constexpr double kMaxParameters = double(int64_t(1) << 40);

int64_t required_size(const JsonObject& o, std::string_view key) {
  const auto v = o.integer(key, 1, kMaxSize);
  if (!v) o.fail_at(key, "missing (required)");
  return *v;
}

int64_t size_or(const JsonObject& o, std::string_view key, int64_t fallback) {
  return o.integer(key, 1, kMaxSize).value_or(fallback);
}

double positive_or(const JsonObject& o, std::string_view key, double fallback) {
  const double v = o.number(key).value_or(fallback);
  if (!(v > 0)) o.fail_at(key, "must be > 0, found ", v);
  return v;
}

// time_step_rank / dt_rank: an integer or "auto" = ceil(d_model / 16).
int64_t dt_rank(const JsonObject& o, std::string_view key, int64_t d_model) {
  const json* v = o.find(key);
  if (!v) return (d_model + 15) / 16;
  if (v->is_string()) {
    if (v->get<std::string>() == "auto") return (d_model + 15) / 16;
    o.fail_at(key, "expected an integer or \"auto\", found ", json_excerpt(*v));
  }
  return *o.integer(key, 1, kMaxSize);
}

// The inner width from `expand` (a number, as both transformers and mamba_ssm accept:
// int(expand * d_model)) and, in HF configs, `intermediate_size`; when both are given they must agree.
int64_t inner_size(const JsonObject& o, int64_t d_model, bool has_intermediate_key) {
  const double expand = positive_or(o, "expand", 2.0);
  const double from_expand = expand * double(d_model);
  const auto intermediate = has_intermediate_key ? o.integer("intermediate_size", 1, kMaxSize) : std::nullopt;
  if (intermediate) {
    if (o.find("expand") && std::abs(from_expand - double(*intermediate)) >= 0.5)
      o.fail_at("intermediate_size", *intermediate, " disagrees with expand * hidden_size = ", expand, " * ", d_model);
    return *intermediate;
  }
  if (from_expand < 1 || from_expand > double(kMaxSize))
    o.fail_at("expand", expand, " * ", d_model, " is not a valid inner width");
  return int64_t(from_expand);
}

// HF's default for a missing id is 0; an explicit null means "none".
std::optional<int64_t> token_id(const JsonObject& o, std::string_view key, int64_t vocab_size) {
  if (!o.value().contains(key)) return 0;
  const auto id = o.integer(key, 0, kMaxSize);
  if (id && *id >= vocab_size) o.fail_at(key, *id, " is outside the vocabulary (vocab_size ", vocab_size, ")");
  return id;
}

MambaConfig parse_hf(const JsonObject& o) {
  MambaConfig c;
  c.dialect = ConfigDialect::HuggingFace;
  c.model_type = *o.string("model_type");
  if (c.model_type != "mamba" && c.model_type != "falcon_mamba")
    o.fail_at("model_type", "\"", c.model_type,
              "\" is not supported: mambacpp runs Mamba-1 models (\"mamba\" or \"falcon_mamba\")");
  c.vocab_size = required_size(o, "vocab_size");
  c.d_model = required_size(o, "hidden_size");
  c.n_layer = required_size(o, "num_hidden_layers");
  c.d_state = size_or(o, "state_size", 16);
  c.d_inner = inner_size(o, c.d_model, true);
  c.d_conv = size_or(o, "conv_kernel", 4);
  c.dt_rank = dt_rank(o, "time_step_rank", c.d_model);
  c.use_bias = o.boolean("use_bias").value_or(false);
  c.use_conv_bias = o.boolean("use_conv_bias").value_or(true);
  c.norm_eps = positive_or(o, "layer_norm_epsilon", 1e-5);
  if (c.falcon()) c.mixer_rms_eps = positive_or(o, "mixer_rms_eps", 1e-6);
  c.tie_embeddings = o.boolean("tie_word_embeddings").value_or(true);
  c.residual_in_fp32 = o.boolean("residual_in_fp32").value_or(true);
  const std::string act = o.string("hidden_act").value_or("silu");
  if (act != "silu") o.fail_at("hidden_act", "\"", act, "\" is not supported (Mamba uses \"silu\")");
  c.bos_token_id = token_id(o, "bos_token_id", c.vocab_size);
  c.eos_token_id = token_id(o, "eos_token_id", c.vocab_size);
  c.pad_token_id = token_id(o, "pad_token_id", c.vocab_size);
  c.time_step_min = positive_or(o, "time_step_min", c.time_step_min);
  c.time_step_max = positive_or(o, "time_step_max", c.time_step_max);
  c.time_step_floor = positive_or(o, "time_step_floor", c.time_step_floor);
  return c;
}

MambaConfig parse_mamba_ssm(const JsonObject& o) {
  MambaConfig c;
  c.dialect = ConfigDialect::MambaSsm;
  c.model_type = "mamba";
  c.d_model = required_size(o, "d_model");
  c.n_layer = required_size(o, "n_layer");
  // mamba_ssm pads the vocabulary up to a multiple; the embedding has that many rows.
  const int64_t vocab = required_size(o, "vocab_size");
  const int64_t multiple = size_or(o, "pad_vocab_size_multiple", 8);
  c.vocab_size = (vocab + multiple - 1) / multiple * multiple;
  if (c.vocab_size > kMaxSize) o.fail_at("pad_vocab_size_multiple", "padding gives an absurd vocabulary size");

  if (o.integer("d_intermediate", 0, kMaxSize).value_or(0) > 0)
    o.fail_at("d_intermediate", "MLP blocks between the mixers are not supported (only 0)");
  if (const json* attn = o.find("attn_layer_idx"); attn && !(attn->is_array() && attn->empty()))
    o.fail_at("attn_layer_idx", "attention layers are not supported (must be empty), found ", json_excerpt(*attn));
  if (!o.boolean("rms_norm").value_or(true))
    o.fail_at("rms_norm", "false (LayerNorm) is not supported; only RMSNorm Mamba models are");
  c.residual_in_fp32 = o.boolean("residual_in_fp32").value_or(true);
  c.tie_embeddings = o.boolean("tie_embeddings").value_or(true);
  c.norm_eps = 1e-5;  // mamba_ssm's RMSNorm default; not stored in its config
  c.bos_token_id = c.eos_token_id = c.pad_token_id = std::nullopt;

  const JsonObject ssm = o.object("ssm_cfg");
  const std::string layer = ssm.string("layer").value_or("Mamba1");
  if (layer != "Mamba1") ssm.fail_at("layer", "\"", layer, "\" is not supported: mambacpp runs Mamba1 layers");
  c.d_state = size_or(ssm, "d_state", 16);
  c.d_conv = size_or(ssm, "d_conv", 4);
  c.d_inner = inner_size(ssm, c.d_model, false);
  c.dt_rank = dt_rank(ssm, "dt_rank", c.d_model);
  c.use_bias = ssm.boolean("bias").value_or(false);
  c.use_conv_bias = ssm.boolean("conv_bias").value_or(true);
  c.time_step_min = positive_or(ssm, "dt_min", c.time_step_min);
  c.time_step_max = positive_or(ssm, "dt_max", c.time_step_max);
  c.time_step_floor = positive_or(ssm, "dt_init_floor", c.time_step_floor);
  return c;
}

// Rough parameter count in floating point (it cannot overflow), to refuse sizes that would
// overflow byte counts downstream.
double approx_parameters(const MambaConfig& c) {
  const double d = double(c.d_model), e = double(c.d_inner), n = double(c.d_state), r = double(c.dt_rank);
  const double per_layer = d * 2 * e + e * double(c.d_conv) + e * (r + 2 * n) + r * e + e * n + e * d + 4 * e + d;
  return double(c.vocab_size) * d * (c.tie_embeddings ? 1 : 2) + double(c.n_layer) * per_layer;
}

}  // namespace

MambaConfig parse_config(const json& j, const std::string& source) {
  try {
    const JsonObject o(j, source);
    MambaConfig c;
    if (o.find("model_type")) {
      c = parse_hf(o);
    } else if (o.find("d_model")) {
      c = parse_mamba_ssm(o);
    } else {
      fail(source, ": not a Mamba config: it has neither model_type (Hugging Face) nor d_model (mamba_ssm)");
    }
    if (approx_parameters(c) > kMaxParameters)
      fail(source, ": the sizes describe about ", approx_parameters(c), " parameters, more than 2^40");
    return c;
  } catch (const json::exception& e) {  // not expected: every access above is type-checked
    fail(source, ": ", e.what());
  }
}

MambaConfig read_config(const std::filesystem::path& config_json) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(config_json, ec)) fail(config_json.string(), ": missing (no such file)");
  return parse_config(read_json_file(config_json), config_json.string());
}

json to_hf_json(const MambaConfig& c) {
  MAMBACPP_CHECK(c.d_model > 0);
  auto id = [](const std::optional<int64_t>& v) { return v ? json(*v) : json(nullptr); };
  json expand = c.d_inner % c.d_model == 0 ? json(c.d_inner / c.d_model) : json(double(c.d_inner) / double(c.d_model));
  json j = {
      {"architectures", json::array({c.falcon() ? "FalconMambaForCausalLM" : "MambaForCausalLM"})},
      {"model_type", c.model_type},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.d_model},
      {"state_size", c.d_state},
      {"num_hidden_layers", c.n_layer},
      {"intermediate_size", c.d_inner},
      {"expand", expand},
      {"conv_kernel", c.d_conv},
      {"time_step_rank", c.dt_rank},
      {"use_bias", c.use_bias},
      {"use_conv_bias", c.use_conv_bias},
      {"layer_norm_epsilon", c.norm_eps},
      {"tie_word_embeddings", c.tie_embeddings},
      {"residual_in_fp32", c.residual_in_fp32},
      {"hidden_act", "silu"},
      {"bos_token_id", id(c.bos_token_id)},
      {"eos_token_id", id(c.eos_token_id)},
      {"pad_token_id", id(c.pad_token_id)},
      {"time_step_min", c.time_step_min},
      {"time_step_max", c.time_step_max},
      {"time_step_floor", c.time_step_floor},
      {"time_step_scale", 1.0},
      {"time_step_init_scheme", "random"},
      {"initializer_range", 0.1},
      {"rescale_prenorm_residual", false},
      {"use_cache", true},
      {"use_mambapy", false},
  };
  if (c.falcon()) {
    j["mixer_rms_eps"] = c.mixer_rms_eps;
    j["use_falcon_mambapy"] = false;
  }
  return j;
}

MambaConfig published_shape(const std::string& name) {
  MambaConfig c;
  c.vocab_size = 50280;
  c.d_state = 16;
  c.d_conv = 4;
  c.tie_embeddings = true;
  if (name == "130m") {
    c.d_model = 768;
    c.n_layer = 24;
  } else if (name == "370m") {
    c.d_model = 1024;
    c.n_layer = 48;
  } else {
    fail("unknown model shape '", name, "' (known: 130m, 370m)");
  }
  c.d_inner = 2 * c.d_model;
  c.dt_rank = (c.d_model + 15) / 16;
  return c;
}

}  // namespace mambacpp
