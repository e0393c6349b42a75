// The model against the transformers fixtures (tests/data/*/reference.safetensors, made by HF
// transformers 5.17.0 in fp32; see /work/shared/fixtures/README.md): logits, final hidden state,
// loss, the recurrent step position by position, greedy tokens, the mamba_ssm checkpoint, and
// F16 / BF16 copies of the weights.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "io/safetensors.h"
#include "model/mamba_model.h"
#include "model_test_support.h"

namespace mambacpp {
namespace {

using testing::expect_parity;
using testing::test_data;
using testing::to_ids;

struct Fixture {
  std::string name;  // folder under tests/data holding the reference
  TensorMap ref;
  std::vector<int32_t> ids;  // input_ids [B, L]
  int B = 0;
  int64_t L = 0;

  explicit Fixture(const std::string& folder) : name(folder), ref(read_safetensors(test_data(folder) / "reference.safetensors").tensors) {
    const Tensor& t = ref.at("input_ids");
    ids = to_ids(t);
    B = int(t.dim(0));
    L = t.dim(1);
  }
  const float* floats(const std::string& key) const { return ref.at(key).data<float>(); }
};

// All logits and the final hidden state of one batched forward.
struct ForwardResult {
  std::vector<float> logits, hidden;
};

ForwardResult run_forward(MambaModel& model, const Fixture& f) {
  ForwardResult r;
  r.logits.resize(size_t(f.B * f.L * model.config().vocab_size));
  r.hidden.resize(size_t(f.B * f.L * model.config().d_model));
  InferenceState state = model.new_state(f.B);
  model.forward(f.ids.data(), f.B, f.L, state, LogitsMode::All, r.logits.data(), r.hidden.data());
  return r;
}

// Logits [B, L, V] computed one token at a time through step().
std::vector<float> run_steps(MambaModel& model, const Fixture& f) {
  const int64_t V = model.config().vocab_size;
  std::vector<float> all(size_t(f.B * f.L * V)), step_logits(size_t(f.B * V));
  InferenceState state = model.new_state(f.B);
  std::vector<int32_t> tokens(size_t(f.B));
  for (int64_t t = 0; t < f.L; ++t) {
    for (int b = 0; b < f.B; ++b) tokens[size_t(b)] = f.ids[size_t(b * f.L + t)];
    model.step(tokens.data(), state, step_logits.data());
    for (int b = 0; b < f.B; ++b)
      std::copy_n(step_logits.data() + b * V, V, all.data() + (b * f.L + t) * V);
  }
  return all;
}

// Greedy continuation of greedy_prompt (prefill, then step), as generate(do_sample=False).
std::vector<int64_t> run_greedy(MambaModel& model, const Fixture& f) {
  const Tensor& prompt_t = f.ref.at("greedy_prompt");
  const Tensor& expected_t = f.ref.at("greedy_tokens");
  const std::vector<int32_t> prompt = to_ids(prompt_t);
  const int64_t V = model.config().vocab_size, new_tokens = expected_t.dim(1) - prompt_t.dim(1);
  std::vector<int64_t> out(prompt.begin(), prompt.end());
  std::vector<float> logits(static_cast<size_t>(V));
  InferenceState state = model.new_state(1);
  model.forward(prompt.data(), 1, int64_t(prompt.size()), state, LogitsMode::Last, logits.data());
  for (int64_t i = 0; i < new_tokens; ++i) {
    const int32_t next = int32_t(testing::argmax(logits.data(), V));
    out.push_back(next);
    if (i + 1 < new_tokens) model.step(&next, state, logits.data());
  }
  return out;
}

// Every check of issue 4 section 7 that a fixture supports.
void check_fixture(MambaModel& model, const Fixture& f) {
  const int64_t n_logits = f.B * f.L * model.config().vocab_size;
  const ForwardResult r = run_forward(model, f);
  expect_parity(f.name + " logits", f.floats("logits"), r.logits.data(), n_logits, 1e-4);
  expect_parity(f.name + " last_hidden_state", f.floats("last_hidden_state"), r.hidden.data(),
                f.B * f.L * model.config().d_model, 1e-4);

  const double loss = testing::next_token_loss(r.logits.data(), f.ids, f.B, f.L, model.config().vocab_size);
  const float expected_loss = f.floats("loss")[0];
  expect_parity(f.name + " loss", &expected_loss, &loss, 1, 1e-5);

  const std::vector<float> stepped = run_steps(model, f);
  expect_parity(f.name + " step_logits", f.floats("logits"), stepped.data(), n_logits, 1e-4);

  const std::vector<int64_t> greedy = run_greedy(model, f);
  const Tensor& expected = f.ref.at("greedy_tokens");
  const std::vector<int64_t> want(expected.data<int64_t>(), expected.data<int64_t>() + expected.numel());
  EXPECT_EQ(greedy, want);
  std::printf("PARITY %s greedy_tokens %s\n", f.name.c_str(), greedy == want ? "identical" : "DIFFER");
}

TEST(ModelParity, HfTinyMamba) {
  MambaModel model = MambaModel::load(test_data("hf-tiny-mamba"));
  EXPECT_EQ(model.weight_type(), WeightType::F32);
  check_fixture(model, Fixture("hf-tiny-mamba"));
}

TEST(ModelParity, HfTinyFalconMamba) {
  MambaModel model = MambaModel::load(test_data("hf-tiny-falcon-mamba"));
  ASSERT_TRUE(model.config().falcon());
  check_fixture(model, Fixture("hf-tiny-falcon-mamba"));
}

// mamba_ssm's pytorch_model.bin of the same weights (backbone.embedding.weight, tied
// lm_head.weight stored too) must give hf-tiny-mamba's logits.
TEST(ModelParity, MambaSsmCheckpointGivesHfLogits) {
  MambaModel model = MambaModel::load(test_data("mamba-ssm-tiny"));
  const Fixture f("hf-tiny-mamba");
  const ForwardResult r = run_forward(model, f);
  expect_parity("mamba-ssm-tiny logits", f.floats("logits"), r.logits.data(), int64_t(r.logits.size()), 1e-4);
}

// A copy of hf-tiny-mamba with every tensor stored as `dtype`, written by our own writer.
std::filesystem::path write_copy(const testing::TempDir& dir, DType dtype) {
  const std::filesystem::path src = test_data("hf-tiny-mamba");
  const SafetensorsFile file = read_safetensors(src / "model.safetensors");
  std::vector<std::pair<std::string, Tensor>> converted;
  for (const auto& [name, t] : file.tensors) converted.emplace_back(name, t.to(dtype));
  const std::filesystem::path out = dir.path() / std::string(dtype_name(dtype));
  std::filesystem::create_directories(out);
  write_safetensors(out / "model.safetensors", converted);
  std::filesystem::copy_file(src / "config.json", out / "config.json");
  return out;
}

// Half-precision weights against the fp32 logits. Bound: rounding each weight to a format with
// unit roundoff u (BF16 2^-8, F16 2^-11) perturbs every linear map, norm and the scan parameters by
// a relative u; to first order the logits move by at most about (number of weight uses on the
// path: embedding, 2 layers x (norm, in_proj, conv, x_proj, dt_proj, A, D, out_proj), norm_f, head
// = 19) x u x the logits' scale. We allow 32 u x max|logit|, and require every argmax to agree.
void check_half_logits(MambaModel& model, const std::string& check, double unit_roundoff) {
  const Fixture f("hf-tiny-mamba");
  const ForwardResult r = run_forward(model, f);
  const float* want = f.floats("logits");
  const int64_t V = model.config().vocab_size, n = int64_t(r.logits.size());
  double scale = 0;
  for (int64_t i = 0; i < n; ++i) scale = std::max(scale, std::fabs(double(want[i])));
  expect_parity(check, want, r.logits.data(), n, 32 * unit_roundoff * scale);
  int64_t argmax_differs = 0;
  for (int64_t row = 0; row < f.B * f.L; ++row)
    argmax_differs += testing::argmax(want + row * V, V) != testing::argmax(r.logits.data() + row * V, V);
  EXPECT_EQ(argmax_differs, 0) << check << ": rows whose argmax differs from the fp32 reference";
  std::printf("PARITY %s argmax_mismatches=%lld of %lld (logit scale %.3g)\n", check.c_str(),
              (long long)argmax_differs, (long long)(f.B * f.L), scale);
}

TEST(ModelParity, F16CheckpointCopy) {
  testing::TempDir dir;
  MambaModel model = MambaModel::load(write_copy(dir, DType::F16));
  EXPECT_EQ(model.weight_type(), WeightType::F16);  // every matrix F16 -> held as F16
  check_half_logits(model, "hf-tiny-mamba f16-checkpoint logits", 0x1p-11);
}

TEST(ModelParity, Bf16CheckpointCopy) {
  testing::TempDir dir;
  MambaModel model = MambaModel::load(write_copy(dir, DType::BF16));
  EXPECT_EQ(model.weight_type(), WeightType::BF16);
  check_half_logits(model, "hf-tiny-mamba bf16-checkpoint logits", 0x1p-8);
}

TEST(ModelParity, Bf16WeightsFromF32Checkpoint) {
  MambaModel model = MambaModel::load(test_data("hf-tiny-mamba"), LoadOptions{WeightType::BF16});
  EXPECT_EQ(model.weight_type(), WeightType::BF16);
  check_half_logits(model, "hf-tiny-mamba bf16-in-memory logits", 0x1p-8);
}

// The F32 checkpoint held as F32 explicitly, and a BF16 checkpoint widened to F32 on request.
TEST(ModelParity, ExplicitWeightTypeOverridesTheFiles) {
  testing::TempDir dir;
  MambaModel widened = MambaModel::load(write_copy(dir, DType::BF16), LoadOptions{WeightType::F32});
  EXPECT_EQ(widened.weight_type(), WeightType::F32);
  check_half_logits(widened, "hf-tiny-mamba bf16-checkpoint-as-f32 logits", 0x1p-8);
}

}  // namespace
}  // namespace mambacpp
