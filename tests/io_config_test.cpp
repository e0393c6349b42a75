// config.json in both dialects: the fixtures parse to the values they state, transformers' own
// config.json equals what to_hf_json writes on every key that matters, and every bad or
// unsupported value is a BadInput naming the file and the key.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io/config.h"
#include "io/json_fields.h"
#include "test_support.h"

namespace mambacpp {
namespace {

using nlohmann::json;
using namespace mambacpp::testing;

json fixture_json(const std::string& rel) { return read_json_file(test_data(rel)); }

void expect_config_error(const json& j, std::initializer_list<std::string> parts) {
  expect_bad_input([&] { parse_config(j, "cfg.json"); }, parts);
}

json hf_tiny() { return fixture_json("hf-tiny-mamba/config.json"); }
json ssm_tiny() { return fixture_json("mamba-ssm-tiny/config.json"); }

void expect_tiny_shape(const MambaConfig& c) {
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.d_model, 64);
  EXPECT_EQ(c.n_layer, 2);
  EXPECT_EQ(c.d_state, 16);
  EXPECT_EQ(c.d_inner, 128);
  EXPECT_EQ(c.d_conv, 4);
  EXPECT_EQ(c.dt_rank, 4);
  EXPECT_FALSE(c.use_bias);
  EXPECT_TRUE(c.use_conv_bias);
  EXPECT_EQ(c.norm_eps, 1e-5);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_TRUE(c.residual_in_fp32);
}

TEST(Config, HuggingFaceFixture) {
  const MambaConfig c = read_config(test_data("hf-tiny-mamba/config.json"));
  expect_tiny_shape(c);
  EXPECT_EQ(c.dialect, ConfigDialect::HuggingFace);
  EXPECT_EQ(c.model_type, "mamba");
  EXPECT_FALSE(c.falcon());
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.eos_token_id, 0);
  EXPECT_EQ(c.pad_token_id, 0);
  EXPECT_EQ(c.time_step_min, 0.001);
  EXPECT_EQ(c.time_step_max, 0.1);
  EXPECT_EQ(c.time_step_floor, 1e-4);
}

TEST(Config, FalconFixture) {
  const MambaConfig c = read_config(test_data("hf-tiny-falcon-mamba/config.json"));
  expect_tiny_shape(c);
  EXPECT_TRUE(c.falcon());
  EXPECT_EQ(c.mixer_rms_eps, 1e-6);
}

TEST(Config, MambaSsmFixture) {
  const MambaConfig c = read_config(test_data("mamba-ssm-tiny/config.json"));
  expect_tiny_shape(c);
  EXPECT_EQ(c.dialect, ConfigDialect::MambaSsm);
  EXPECT_EQ(c.model_type, "mamba");
  EXPECT_FALSE(c.eos_token_id.has_value());
}

TEST(Config, MambaSsmReleaseStyle) {
  // state-spaces/mamba-130m's config.json as released: empty ssm_cfg, vocab padded 50277 -> 50280.
  const json j = json::parse(R"({"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {},
      "rms_norm": true, "residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 8})");
  const MambaConfig c = parse_config(j, "cfg.json");
  EXPECT_EQ(c.vocab_size, 50280);
  EXPECT_EQ(c.d_inner, 1536);
  EXPECT_EQ(c.dt_rank, 48);
  EXPECT_EQ(c.d_state, 16);
  EXPECT_EQ(c.d_conv, 4);
  EXPECT_TRUE(c.tie_embeddings);
}

TEST(Config, MambaSsmExplicitSsmCfg) {
  json j = ssm_tiny();
  j["ssm_cfg"] = {{"d_state", 8},       {"d_conv", 3},     {"expand", 3},   {"dt_rank", 5},          {"bias", true},
                  {"conv_bias", false}, {"dt_min", 0.002}, {"dt_max", 0.2}, {"dt_init_floor", 0.001}};
  j["vocab_size"] = 500;
  j["tie_embeddings"] = false;
  const MambaConfig c = parse_config(j, "cfg.json");
  EXPECT_EQ(c.vocab_size, 504);
  EXPECT_EQ(c.d_state, 8);
  EXPECT_EQ(c.d_conv, 3);
  EXPECT_EQ(c.d_inner, 192);
  EXPECT_EQ(c.dt_rank, 5);
  EXPECT_TRUE(c.use_bias);
  EXPECT_FALSE(c.use_conv_bias);
  EXPECT_FALSE(c.tie_embeddings);
  EXPECT_EQ(c.time_step_min, 0.002);
  EXPECT_EQ(c.time_step_max, 0.2);
  EXPECT_EQ(c.time_step_floor, 0.001);
}

TEST(Config, TimeStepRankAutoAndDefaults) {
  json j = {{"model_type", "mamba"},  {"vocab_size", 100},        {"hidden_size", 100},
            {"num_hidden_layers", 3}, {"time_step_rank", "auto"}, {"bos_token_id", nullptr}};
  MambaConfig c = parse_config(j, "cfg.json");
  EXPECT_EQ(c.dt_rank, 7);  // ceil(100 / 16)
  EXPECT_EQ(c.d_inner, 200);
  EXPECT_FALSE(c.bos_token_id.has_value());  // explicit null
  EXPECT_EQ(c.eos_token_id, 0);              // HF's default
  j.erase("time_step_rank");
  j["intermediate_size"] = 300;
  c = parse_config(j, "cfg.json");
  EXPECT_EQ(c.dt_rank, 7);
  EXPECT_EQ(c.d_inner, 300);  // intermediate_size alone
}

TEST(Config, ToHfJsonMatchesTransformers) {
  // Every key transformers wrote in the fixture, except bookkeeping, must come out the same.
  const json theirs = hf_tiny();
  const json ours = to_hf_json(read_config(test_data("hf-tiny-mamba/config.json")));
  for (const auto& [key, value] : theirs.items()) {
    if (key == "transformers_version" || key == "dtype" || key == "use_associative_scan") continue;
    ASSERT_TRUE(ours.contains(key)) << key;
    EXPECT_EQ(ours[key], value) << key;
  }
  const json falcon_theirs = fixture_json("hf-tiny-falcon-mamba/config.json");
  const json falcon_ours = to_hf_json(read_config(test_data("hf-tiny-falcon-mamba/config.json")));
  EXPECT_EQ(falcon_ours["architectures"], falcon_theirs["architectures"]);
  EXPECT_EQ(falcon_ours["mixer_rms_eps"], falcon_theirs["mixer_rms_eps"]);
}

void expect_same(const MambaConfig& a, const MambaConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.d_model, b.d_model);
  EXPECT_EQ(a.n_layer, b.n_layer);
  EXPECT_EQ(a.d_state, b.d_state);
  EXPECT_EQ(a.d_inner, b.d_inner);
  EXPECT_EQ(a.d_conv, b.d_conv);
  EXPECT_EQ(a.dt_rank, b.dt_rank);
  EXPECT_EQ(a.use_bias, b.use_bias);
  EXPECT_EQ(a.use_conv_bias, b.use_conv_bias);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.mixer_rms_eps, b.mixer_rms_eps);
  EXPECT_EQ(a.tie_embeddings, b.tie_embeddings);
  EXPECT_EQ(a.residual_in_fp32, b.residual_in_fp32);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_id, b.eos_token_id);
  EXPECT_EQ(a.pad_token_id, b.pad_token_id);
  EXPECT_EQ(a.time_step_min, b.time_step_min);
  EXPECT_EQ(a.time_step_max, b.time_step_max);
  EXPECT_EQ(a.time_step_floor, b.time_step_floor);
}

TEST(Config, ToHfJsonRoundTrips) {
  for (const char* rel :
       {"hf-tiny-mamba/config.json", "hf-tiny-falcon-mamba/config.json", "mamba-ssm-tiny/config.json"}) {
    SCOPED_TRACE(rel);
    const MambaConfig c = read_config(test_data(rel));
    const MambaConfig back = parse_config(to_hf_json(c), "roundtrip");
    expect_same(back, c);
    EXPECT_EQ(back.dialect, ConfigDialect::HuggingFace);
  }
  // An odd shape: inner width not a multiple of the model width, biases, untied, no ids.
  MambaConfig odd = parse_config(hf_tiny(), "cfg.json");
  odd.d_model = 48;
  odd.d_inner = 100;
  odd.dt_rank = 5;
  odd.d_conv = 3;
  odd.use_bias = true;
  odd.tie_embeddings = false;
  odd.bos_token_id = std::nullopt;
  expect_same(parse_config(to_hf_json(odd), "roundtrip"), odd);
}

TEST(Config, UnknownHarmlessKeysAccepted) {
  json j = hf_tiny();
  j["some_future_flag"] = {1, 2};
  j["use_mambapy"] = true;
  EXPECT_NO_THROW(parse_config(j, "cfg.json"));
  json s = ssm_tiny();
  s["attn_cfg"] = {{"num_heads", 8}};
  s["fused_add_norm"] = false;
  s["attn_layer_idx"] = nullptr;
  EXPECT_NO_THROW(parse_config(s, "cfg.json"));
}

// `edit` applied to the HF tiny config must give an error naming cfg.json and `key`.
void expect_hf_error(const std::function<void(json&)>& edit, const std::string& key, const std::string& what) {
  json j = hf_tiny();
  edit(j);
  SCOPED_TRACE(key);
  expect_config_error(j, {"cfg.json", key, what});
}

TEST(Config, BadHuggingFaceValues) {
  expect_hf_error([](json& j) { j["model_type"] = "mamba2"; }, "model_type", "\"mamba2\" is not supported");
  expect_hf_error([](json& j) { j["model_type"] = 3; }, "model_type", "expected a string");
  expect_hf_error([](json& j) { j["hidden_size"] = -64; }, "hidden_size", "outside");
  expect_hf_error([](json& j) { j["hidden_size"] = 0; }, "hidden_size", "outside");
  expect_hf_error([](json& j) { j["vocab_size"] = "512"; }, "vocab_size", "expected an integer");
  expect_hf_error([](json& j) { j["vocab_size"] = 512.5; }, "vocab_size", "expected an integer");
  expect_hf_error([](json& j) { j.erase("vocab_size"); }, "vocab_size", "missing");
  expect_hf_error([](json& j) { j["num_hidden_layers"] = true; }, "num_hidden_layers", "expected an integer");
  expect_hf_error([](json& j) { j["state_size"] = int64_t(1) << 31; }, "state_size", "outside");
  expect_hf_error([](json& j) { j["hidden_act"] = "gelu"; }, "hidden_act", "\"gelu\" is not supported");
  expect_hf_error([](json& j) { j["intermediate_size"] = 100; }, "intermediate_size", "disagrees");
  expect_hf_error([](json& j) { j["expand"] = -2; }, "expand", "must be > 0");
  expect_hf_error([](json& j) { j["time_step_rank"] = 0; }, "time_step_rank", "outside");
  expect_hf_error([](json& j) { j["time_step_rank"] = "big"; }, "time_step_rank", "\"auto\"");
  expect_hf_error([](json& j) { j["conv_kernel"] = 0; }, "conv_kernel", "outside");
  expect_hf_error([](json& j) { j["layer_norm_epsilon"] = 0; }, "layer_norm_epsilon", "must be > 0");
  expect_hf_error([](json& j) { j["layer_norm_epsilon"] = "1e-5"; }, "layer_norm_epsilon", "expected a number");
  expect_hf_error([](json& j) { j["use_bias"] = 1; }, "use_bias", "expected true or false");
  expect_hf_error([](json& j) { j["tie_word_embeddings"] = "yes"; }, "tie_word_embeddings", "expected true or false");
  expect_hf_error([](json& j) { j["eos_token_id"] = 512; }, "eos_token_id", "outside the vocabulary");
  expect_hf_error([](json& j) { j["pad_token_id"] = -1; }, "pad_token_id", "outside");
  expect_hf_error([](json& j) { j["bos_token_id"] = json::array({0, 1}); }, "bos_token_id", "expected an integer");
  expect_hf_error([](json& j) { j["time_step_min"] = -0.1; }, "time_step_min", "must be > 0");
  expect_hf_error(
      [](json& j) {
        j["model_type"] = "falcon_mamba";
        j["mixer_rms_eps"] = 0;
      },
      "mixer_rms_eps", "must be > 0");
  // Each size is sane, but together they are not a model anyone has.
  expect_hf_error(
      [](json& j) {
        j["vocab_size"] = int64_t(1) << 30;
        j["hidden_size"] = int64_t(1) << 29;
        j.erase("intermediate_size");
      },
      "", "more than 2^40");
}

// `edit` applied to the mamba_ssm tiny config must give an error naming cfg.json and `key`.
void expect_ssm_error(const std::function<void(json&)>& edit, const std::string& key, const std::string& what) {
  json j = ssm_tiny();
  edit(j);
  SCOPED_TRACE(key);
  expect_config_error(j, {"cfg.json", key, what});
}

TEST(Config, BadMambaSsmValues) {
  expect_ssm_error([](json& j) { j["ssm_cfg"]["layer"] = "Mamba2"; }, "ssm_cfg.layer", "\"Mamba2\" is not supported");
  expect_ssm_error([](json& j) { j["attn_layer_idx"] = {1}; }, "attn_layer_idx", "attention layers are not supported");
  expect_ssm_error([](json& j) { j["attn_layer_idx"] = "1"; }, "attn_layer_idx", "not supported");
  expect_ssm_error([](json& j) { j["d_intermediate"] = 128; }, "d_intermediate", "not supported");
  expect_ssm_error([](json& j) { j["rms_norm"] = false; }, "rms_norm", "LayerNorm");
  expect_ssm_error([](json& j) { j["d_model"] = "64"; }, "d_model", "expected an integer");
  expect_ssm_error([](json& j) { j["n_layer"] = -1; }, "n_layer", "outside");
  expect_ssm_error([](json& j) { j.erase("vocab_size"); }, "vocab_size", "missing");
  expect_ssm_error([](json& j) { j["pad_vocab_size_multiple"] = 0; }, "pad_vocab_size_multiple", "outside");
  expect_ssm_error([](json& j) { j["ssm_cfg"] = "Mamba1"; }, "ssm_cfg", "expected a JSON object");
  expect_ssm_error([](json& j) { j["ssm_cfg"]["d_state"] = 0; }, "ssm_cfg.d_state", "outside");
  expect_ssm_error([](json& j) { j["ssm_cfg"]["d_conv"] = 2.5; }, "ssm_cfg.d_conv", "expected an integer");
  expect_ssm_error([](json& j) { j["ssm_cfg"]["dt_rank"] = -3; }, "ssm_cfg.dt_rank", "outside");
  expect_ssm_error([](json& j) { j["ssm_cfg"]["bias"] = "no"; }, "ssm_cfg.bias", "expected true or false");
}

TEST(Config, NotAConfig) {
  expect_config_error(json::array({1, 2}), {"cfg.json", "expected a JSON object"});
  expect_config_error(json{{"hidden_size", 64}}, {"cfg.json", "neither model_type", "d_model"});
  TempDir dir;
  write_text(dir / "config.json", R"({"model_type": "mamba", "model_type": "mamba2"})");
  expect_bad_input([&] { read_config(dir / "config.json"); }, {"config.json", "duplicate JSON key \"model_type\""});
  write_text(dir / "config.json", R"({"model_type": "mamba", )");
  expect_bad_input([&] { read_config(dir / "config.json"); }, {"config.json", "invalid JSON"});
  expect_bad_input([&] { read_config(dir / "absent.json"); }, {"absent.json", "missing"});
  const std::string deep = std::string(100, '[') + std::string(100, ']');
  expect_bad_input([&] { parse_json(deep, "deep.json"); }, {"deep.json", "nested deeper than 64"});
  EXPECT_NO_THROW(parse_json(std::string(30, '[') + std::string(30, ']'), "ok.json"));
}

}  // namespace
}  // namespace mambacpp
