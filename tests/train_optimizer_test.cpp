// AdamW against PyTorch (the fixture's adamw_step1.* after one torch.optim.AdamW step from its
// grad.*), the default parameter groups, the learning-rate schedule, gradient clipping, and the
// resume property: a fresh optimizer given saved moments and the step count continues bit for bit.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <set>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/threads.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "model/mamba_model.h"
#include "model_test_support.h"
#include "train/optimizer.h"

namespace mambacpp {
namespace {

using testing::Worst;
using testing::worst_abs_diff;

// The fixture's optimizer settings (tests/data/README.md: lr 1e-3, betas (0.9, 0.95), eps 1e-8,
// weight decay 0.1 on every tensor).
constexpr double kLr = 1e-3;
AdamWOptions torch_options(bool exclude_groups) {
  AdamWOptions o;
  o.beta1 = 0.9;
  o.beta2 = 0.95;
  o.eps = 1e-8;
  o.weight_decay = 0.1;
  o.exclude_vectors_and_a_log = exclude_groups;
  return o;
}

std::filesystem::path model_dir() { return testing::test_data("hf-tiny-mamba"); }
const TensorMap& reference() {
  static const TensorMap ref = read_safetensors(model_dir() / "reference.safetensors").tensors;
  return ref;
}
const MambaConfig& tiny_config() {
  static const MambaConfig config = read_config(model_dir() / "config.json");
  return config;
}

// A Parameters (F32) holding the tensors `prefix` + name of `tensors` for every parameter.
Parameters parameters_from(const TensorMap& tensors, const std::string& prefix) {
  Parameters p(tiny_config(), WeightType::F32);
  for (const ParamSpec& s : p.table().specs()) {
    const Tensor& t = tensors.at(prefix + s.name);
    EXPECT_EQ(t.numel(), s.numel()) << s.name;
    p.assign(s, t.dtype(), t.raw());
  }
  return p;
}
Parameters reference_grads() { return parameters_from(reference(), "grad."); }
// The fixture model's weights, read straight from its file (most tests need no model).
Parameters initial_weights() {
  static const TensorMap weights = read_safetensors(model_dir() / "model.safetensors").tensors;
  return parameters_from(weights, "");
}

std::vector<float> values(const Parameters& p, const ParamSpec& s) {
  const Tensor t = p.export_tensor(s, DType::F32);
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

bool regions_equal(const Parameters& a, const Parameters& b) {
  for (ParamKind kind : {ParamKind::Vector, ParamKind::Matrix}) {
    const int64_t n = a.table().region_elements(kind);
    if (n != b.table().region_elements(kind)) return false;
    if (std::memcmp(a.region(kind), b.region(kind), size_t(n) * sizeof(float)) != 0) return false;
  }
  return true;
}

// Copies every parameter tensor of `from` into `to` through the file form (export, assign), as a
// checkpoint would.
void restore(Parameters& to, const Parameters& from) {
  for (const ParamSpec& s : from.table().specs()) {
    const Tensor t = from.export_tensor(s, DType::F32);
    to.assign(s, DType::F32, t.raw());
  }
}

TEST(AdamW, OneStepMatchesTorch) {
  MambaModel model = MambaModel::load(model_dir());
  AdamW opt(model.config(), torch_options(false));
  opt.step(model.parameters(), reference_grads(), kLr);
  model.parameters_changed();
  EXPECT_EQ(opt.steps_taken(), 1);
  const Parameters& params = model.parameters();

  Worst overall;
  std::string worst_name;
  for (const ParamSpec& s : params.table().specs()) {
    const Tensor& expected = reference().at("adamw_step1." + s.name);
    const std::vector<float> actual = values(params, s);
    const Worst w = worst_abs_diff(expected.data<float>(), actual.data(), s.numel());
    EXPECT_LE(w.diff, 1e-6) << s.name << ": worst element " << w.index << " expected " << w.expected << " actual "
                            << w.actual;
    if (w.diff > overall.diff || overall.index < 0) overall = w, worst_name = s.name;
  }
  std::printf("PARITY adamw_step1 max_abs_diff=%.3g (tolerance 1e-06) at %s[%lld]\n", overall.diff,
              worst_name.c_str(), (long long)overall.index);
}

// mamba_ssm's groups, spelled out by name here: these take no decay, every other tensor does
// (the embedding, every projection weight and the conv weight, which is [E, 1, W] in files).
bool expect_no_decay(const std::string& name) {
  for (const std::string suffix : {"norm.weight", "norm_f.weight", ".bias", ".A_log", ".D"})
    if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      return true;
  return false;
}

TEST(AdamW, DefaultGroupsSkipDecayOnVectorsAndALog) {
  // Three runs from the same start and gradients: grouped decay, decay everywhere, no decay.
  Parameters grouped = initial_weights(), everywhere = initial_weights(), nowhere = initial_weights();
  const Parameters grads = reference_grads();
  AdamWOptions no_decay = torch_options(false);
  no_decay.weight_decay = 0;
  AdamW(tiny_config(), torch_options(true)).step(grouped, grads, kLr);
  AdamW(tiny_config(), torch_options(false)).step(everywhere, grads, kLr);
  AdamW(tiny_config(), no_decay).step(nowhere, grads, kLr);

  std::set<std::string> undecayed;
  for (const ParamSpec& s : grouped.table().specs()) {
    const std::vector<float> got = values(grouped, s);
    const bool skip = expect_no_decay(s.name);
    if (skip) undecayed.insert(s.name);
    EXPECT_EQ(got, values(skip ? nowhere : everywhere, s)) << s.name << (skip ? " should take no weight decay" : " should be decayed");
    EXPECT_NE(got, values(skip ? everywhere : nowhere, s)) << s.name << ": decay made no difference here";
  }
  // Per layer: norm, conv bias, dt bias, A_log, D; plus norm_f.
  EXPECT_EQ(undecayed.size(), size_t(5 * tiny_config().n_layer + 1));
  EXPECT_TRUE(undecayed.count("backbone.layers.1.mixer.A_log"));
  EXPECT_FALSE(undecayed.count("backbone.layers.1.mixer.conv1d.weight"));
}

// Runs f with `threads` threads, then puts the count back.
template <class F>
auto with_threads(int threads, F&& f) {
  const int before = num_threads();
  set_num_threads(threads);
  auto result = f();
  set_num_threads(before);
  return result;
}

TEST(AdamW, SameResultWithOneOrTwoThreads) {
  const Parameters grads = reference_grads();
  auto step_with = [&](int threads) {
    return with_threads(threads, [&] {
      Parameters p = initial_weights();
      AdamW(tiny_config(), torch_options(true)).step(p, grads, kLr);
      return p;
    });
  };
  EXPECT_TRUE(regions_equal(step_with(1), step_with(2)));
}

// Random values in every tensor of a shape with odd sizes, so that loops have ragged tails.
Parameters random_parameters(const MambaConfig& config, uint64_t seed) {
  Parameters p(config, WeightType::F32);
  Rng rng(seed);
  for (const ParamSpec& s : p.table().specs()) {
    std::vector<float> v(size_t(s.numel()));
    for (float& x : v) x = float(rng.normal() * 0.1);
    p.assign(s, DType::F32, v.data());
  }
  return p;
}

MambaConfig odd_config() {
  MambaConfig c;
  c.vocab_size = 97;
  c.d_model = 40;
  c.n_layer = 2;
  c.d_state = 5;
  c.d_inner = 72;
  c.d_conv = 3;
  c.dt_rank = 3;
  c.use_bias = true;
  c.tie_embeddings = false;
  return c;
}

// Runs f with the kernel level capped at `level` (core/cpu_features.h), then lifts the cap.
template <class F>
auto with_kernels(const char* level, F&& f) {
  setenv("MAMBACPP_CPU", level, 1);
  auto result = f();
  unsetenv("MAMBACPP_CPU");
  return result;
}

TEST(AdamW, GenericAndVectorKernelsGiveTheSameBits) {
  const MambaConfig config = odd_config();
  const Parameters grads = random_parameters(config, 2);
  auto two_steps = [&] {
    Parameters p = random_parameters(config, 1);
    AdamW opt(config, AdamWOptions{});
    opt.step(p, grads, kLr);
    opt.step(p, grads, kLr);
    return p;
  };
  const Parameters generic = with_kernels("generic", two_steps);
  const Parameters best = two_steps();
  EXPECT_TRUE(regions_equal(generic, best));
  Parameters g = random_parameters(config, 3);
  EXPECT_EQ(with_kernels("generic", [&] { return clip_grad_norm(g, 0); }), clip_grad_norm(g, 0));
}

// Gradients for a second step: the reference gradients of each tensor in reverse order.
Parameters reversed_grads() {
  const Parameters g = reference_grads();
  Parameters r(tiny_config(), WeightType::F32);
  for (const ParamSpec& s : g.table().specs()) {
    std::vector<float> v = values(g, s);
    std::reverse(v.begin(), v.end());
    r.assign(s, DType::F32, v.data());
  }
  return r;
}

TEST(AdamW, ResumedOptimizerContinuesBitForBit) {
  const Parameters g1 = reference_grads(), g2 = reversed_grads();
  Parameters straight = initial_weights();
  AdamW first(tiny_config(), torch_options(true));
  first.step(straight, g1, kLr);

  // A second optimizer given what a checkpoint saves after step 1: parameters, both moments and
  // the step count.
  Parameters resumed = initial_weights();
  restore(resumed, straight);
  AdamW second(tiny_config(), torch_options(true));
  restore(second.first_moment(), first.first_moment());
  restore(second.second_moment(), first.second_moment());
  second.set_steps_taken(first.steps_taken());

  // Without the step count (bias correction restarts), the second step differs.
  Parameters forgetful = initial_weights();
  restore(forgetful, straight);
  AdamW third(tiny_config(), torch_options(true));
  restore(third.first_moment(), first.first_moment());
  restore(third.second_moment(), first.second_moment());

  first.step(straight, g2, 0.5 * kLr);
  second.step(resumed, g2, 0.5 * kLr);
  third.step(forgetful, g2, 0.5 * kLr);
  EXPECT_EQ(second.steps_taken(), 2);
  EXPECT_TRUE(regions_equal(straight, resumed));
  EXPECT_TRUE(regions_equal(first.first_moment(), second.first_moment()));
  EXPECT_TRUE(regions_equal(first.second_moment(), second.second_moment()));
  EXPECT_FALSE(regions_equal(straight, forgetful));
}

TEST(LearningRate, WarmupThenCosineToMinimum) {
  constexpr int64_t kWarmup = 10, kTotal = 110;
  constexpr double kMax = 1e-3, kMin = 1e-4;
  auto lr = [](int64_t step) { return learning_rate(step, kWarmup, kTotal, kMax, kMin); };
  auto cosine = [](double progress) { return kMin + (kMax - kMin) * (1 + std::cos(std::numbers::pi * progress)) / 2; };
  EXPECT_DOUBLE_EQ(lr(0), kMax / 10);  // the first step is not taken at zero
  EXPECT_DOUBLE_EQ(lr(4), kMax * 5 / 10);
  EXPECT_DOUBLE_EQ(lr(9), kMax);
  EXPECT_DOUBLE_EQ(lr(10), kMax);  // cosine starts at the top
  EXPECT_DOUBLE_EQ(lr(35), cosine(0.25));
  EXPECT_DOUBLE_EQ(lr(60), (kMax + kMin) / 2);
  EXPECT_DOUBLE_EQ(lr(109), cosine(0.99));
  EXPECT_DOUBLE_EQ(lr(110), kMin);
  EXPECT_DOUBLE_EQ(lr(1000), kMin);
  EXPECT_DOUBLE_EQ(learning_rate(0, 0, 100, kMax, kMin), kMax);  // no warmup
  for (int64_t s = 1; s < kTotal + 5; ++s) {
    if (s < kWarmup) EXPECT_GT(lr(s), lr(s - 1)) << s;
    else EXPECT_LE(lr(s), lr(s - 1)) << s;
  }
}

// Small gradients with a known norm: 3 and 4 in layer 0's norm weight (vector region) and 12 in
// the embedding (matrix region): sqrt(9 + 16 + 144) = 13.
Parameters known_grads() {
  Parameters g(tiny_config(), WeightType::F32);
  const float norm_values[] = {3, 4}, embedding_value = 12;
  g.assign_range(*g.table().find(ParamRole::Norm, 0), 0, 2, DType::F32, norm_values);
  g.assign_range(*g.table().find(ParamRole::Embedding), 100, 1, DType::F32, &embedding_value);
  return g;
}

TEST(ClipGradNorm, NormAndTorchScaling) {
  Parameters g = known_grads();
  const float* norm = g.vector(*g.table().find(ParamRole::Norm, 0));
  const float* embedding = g.matrix_f32(*g.table().find(ParamRole::Embedding));
  EXPECT_DOUBLE_EQ(clip_grad_norm(g, 0), 13);  // 0: measure only
  EXPECT_DOUBLE_EQ(clip_grad_norm(g, 13.5), 13);
  EXPECT_EQ(norm[0], 3.0f);  // below the limit: untouched

  EXPECT_DOUBLE_EQ(clip_grad_norm(g, 6.5), 13);
  const double coef = 6.5 / (13 + 1e-6);  // torch's clip_coef
  EXPECT_FLOAT_EQ(norm[0], float(3 * coef));
  EXPECT_FLOAT_EQ(norm[1], float(4 * coef));
  EXPECT_FLOAT_EQ(embedding[100], float(12 * coef));
  EXPECT_NEAR(clip_grad_norm(g, 0), 6.5, 1e-6);
}

TEST(ClipGradNorm, FixtureGradientsNormInDoubleWhateverTheThreads) {
  double sum = 0;
  for (const auto& [name, t] : reference())
    if (name.rfind("grad.", 0) == 0)
      for (int64_t i = 0; i < t.numel(); ++i) sum += double(t.data<float>()[i]) * t.data<float>()[i];
  Parameters g = reference_grads();
  const double one_thread = with_threads(1, [&] { return clip_grad_norm(g, 0); });
  const double two_threads = with_threads(2, [&] { return clip_grad_norm(g, 0); });
  EXPECT_NEAR(one_thread, std::sqrt(sum), 1e-12 * std::sqrt(sum));
  EXPECT_EQ(one_thread, two_threads);  // fixed summation order
}

TEST(ClipGradNorm, NonFiniteGradientGivesNonFiniteNormAndNoScaling) {
  for (float bad : {NAN, INFINITY}) {
    Parameters g = known_grads();
    g.assign_range(*g.table().find(ParamRole::ALog, 1), 7, 1, DType::F32, &bad);
    const double n = clip_grad_norm(g, 1.0);
    if (std::isnan(bad)) EXPECT_TRUE(std::isnan(n)) << n;
    else EXPECT_EQ(n, INFINITY);
    EXPECT_EQ(g.vector(*g.table().find(ParamRole::Norm, 0))[1], 4.0f) << "scaled despite a non-finite norm";
  }
}

}  // namespace
}  // namespace mambacpp
