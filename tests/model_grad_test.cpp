// Gradients of the training loss (MambaModel::loss with grads, and the `grad` command):
//  - against transformers' grad.* of the fixtures: |ours - ref| <= 1e-5 + 1e-3 |ref| elementwise;
//  - against central finite differences of the plain double-precision reference of
//    model_double_reference.h on the odd second shape (Mamba and Falcon-Mamba), same tolerance;
//  - independent of the scan's checkpoint interval (1, odd, default, longer than the sequence);
//  - the forward-only (chunked) loss equals the training loss; scaling and accumulation; bit-exact
//    repeats; bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/mamba_model.h"
#include "model_double_reference.h"
#include "model_test_support.h"

namespace mambacpp {
namespace {

using namespace testing;

// |ours - ref| <= abs_tol + rel_tol |ref| for every element; prints the worst ratio to the bound.
void expect_gradient_close(const std::string& check, const float* ref, const float* ours, int64_t n,
                           double abs_tol = 1e-5, double rel_tol = 1e-3) {
  double worst_ratio = 0, max_diff = 0;
  int64_t worst = -1;
  for (int64_t i = 0; i < n; ++i) {
    const double diff = std::fabs(double(ours[i]) - double(ref[i]));
    const double ratio = std::isnan(diff) ? INFINITY : diff / (abs_tol + rel_tol * std::fabs(double(ref[i])));
    max_diff = std::max(max_diff, std::isnan(diff) ? INFINITY : diff);
    if (ratio > worst_ratio || worst < 0) worst_ratio = ratio, worst = i;
  }
  std::printf("PARITY %s max_abs_diff=%.3g worst/bound=%.3g\n", check.c_str(), max_diff, worst_ratio);
  EXPECT_LE(worst_ratio, 1.0) << check << ": element " << worst << " expected " << ref[worst] << " got "
                              << ours[worst];
}

// Inputs and next-token targets of a [B, L] id batch (the last position has no target).
std::vector<int32_t> next_token_targets(const std::vector<int32_t>& ids, int B, int64_t L) {
  std::vector<int32_t> targets(ids.size(), -1);
  for (int b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < L; ++t) targets[size_t(b * L + t)] = ids[size_t(b * L + t + 1)];
  return targets;
}

struct GradRun {
  MambaModel::Loss loss;
  Parameters grads;
};

GradRun mean_loss_gradients(MambaModel& model, const std::vector<int32_t>& ids, int B, int64_t L) {
  const std::vector<int32_t> targets = next_token_targets(ids, B, L);
  GradRun r{{}, Parameters(model.config(), WeightType::F32)};
  r.loss = model.loss(ids.data(), targets.data(), B, L, &r.grads, float(1.0 / double(B * (L - 1))));
  return r;
}

// ---- Against transformers

class FixtureGradients : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureGradients, LossAndEveryGradientMatchTransformers) {
  const std::filesystem::path dir = test_data(GetParam());
  const TensorMap ref = read_safetensors(dir / "reference.safetensors").tensors;
  const Tensor& input = ref.at("input_ids");
  const int B = int(input.dim(0));
  const int64_t L = input.dim(1);
  MambaModel model = MambaModel::load(dir, LoadOptions{WeightType::F32});
  const GradRun r = mean_loss_gradients(model, to_ids(input), B, L);
  EXPECT_EQ(r.loss.count, B * (L - 1));
  const float ref_loss = ref.at("loss").data<float>()[0], ours_loss = float(r.loss.mean());
  expect_parity(GetParam() + " training loss", &ref_loss, &ours_loss, 1, 1e-5);
  int checked = 0;
  for (const ParamSpec& s : model.parameters().table().specs()) {
    const Tensor& expected = ref.at("grad." + s.name);
    ASSERT_EQ(expected.shape(), s.file_shape) << s.name;
    const Tensor ours = r.grads.export_tensor(s, DType::F32);
    expect_gradient_close(GetParam() + " grad." + s.name, expected.data<float>(), ours.data<float>(), ours.numel());
    ++checked;
  }
  int in_file = 0;
  for (const auto& [name, t] : ref) in_file += name.rfind("grad.", 0) == 0;
  EXPECT_EQ(checked, in_file) << "every grad.* of the fixture is compared";
}

INSTANTIATE_TEST_SUITE_P(Model, FixtureGradients, ::testing::Values("hf-tiny-mamba", "hf-tiny-falcon-mamba"),
                         [](const auto& info) { return info.param == "hf-tiny-mamba" ? "Mamba" : "FalconMamba"; });

// ---- Against finite differences of the double-precision reference

// Mean next-token loss of the double reference over a [B, L] batch.
double reference_loss(const MambaConfig& c, Weights& w, const std::vector<int32_t>& ids, int B, int64_t L) {
  double total = 0;
  for (int b = 0; b < B; ++b) {
    const std::vector<int32_t> seq(ids.begin() + b * L, ids.begin() + (b + 1) * L);
    const Matrix logits = reference_logits(c, w, seq);
    for (int64_t t = 0; t + 1 < L; ++t) {
      const auto& row = logits[size_t(t)];
      double mx = row[0];
      for (double v : row) mx = std::max(mx, v);
      double sum = 0;
      for (double v : row) sum += std::exp(v - mx);
      total += mx + std::log(sum) - row[size_t(seq[size_t(t + 1)])];
    }
  }
  return total / double(B * (L - 1));
}

class FiniteDifferences : public ::testing::TestWithParam<bool> {};  // param: Falcon-Mamba

TEST_P(FiniteDifferences, WholeModelGradientsOnOddShape) {
  const MambaConfig c = odd_config(GetParam());
  auto [weights, tensors] = random_weights(c, 11);
  MambaModel model = MambaModel::from_tensors(c, tensors, "odd shape", LoadOptions{WeightType::F32});
  model.set_scan_checkpoint_every(3);  // several chunks in each sequence
  const int B = 2;
  const int64_t L = 8;
  Rng rng(5);
  std::vector<int32_t> ids(size_t(B * L));
  for (int32_t& id : ids) id = int32_t(rng.next_u64() % uint64_t(c.vocab_size));
  const GradRun r = mean_loss_gradients(model, ids, B, L);
  const double loss = reference_loss(c, weights, ids, B, L);
  const float loss_f = float(loss), ours_f = float(r.loss.mean());
  expect_parity("odd shape training loss vs double reference", &loss_f, &ours_f, 1, 1e-5);

  // A few elements of every tensor, central differences in double (h = 1e-5: truncation ~1e-10).
  constexpr double h = 1e-5;
  for (const TensorInit& t : hf_tensor_list(c)) {
    const ParamSpec* spec = model.parameters().table().find(t.name);
    ASSERT_NE(spec, nullptr) << t.name;
    const Tensor ours = r.grads.export_tensor(*spec, DType::F32);
    std::vector<double>& values = weights.at(t.name);
    std::vector<float> fd, analytic;
    for (int k = 0; k < 3; ++k) {
      const size_t i = size_t(rng.next_u64() % values.size());
      const double saved = values[i];
      values[i] = saved + h;
      const double up = reference_loss(c, weights, ids, B, L);
      values[i] = saved - h;
      const double down = reference_loss(c, weights, ids, B, L);
      values[i] = saved;
      fd.push_back(float((up - down) / (2 * h)));
      analytic.push_back(ours.data<float>()[i]);
    }
    expect_gradient_close(std::string(GetParam() ? "falcon " : "") + "finite differences " + t.name, fd.data(),
                          analytic.data(), int64_t(fd.size()));
  }
}

INSTANTIATE_TEST_SUITE_P(Model, FiniteDifferences, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "FalconMamba" : "Mamba"; });

// ---- Properties

struct FixtureBatch {
  std::vector<int32_t> ids;
  int B = 0;
  int64_t L = 0;
  explicit FixtureBatch(const std::string& folder) {
    const TensorMap ref = read_safetensors(test_data(folder) / "reference.safetensors").tensors;
    const Tensor& input = ref.at("input_ids");
    ids = to_ids(input);
    B = int(input.dim(0));
    L = input.dim(1);
  }
};

// Elementwise |a - b| <= abs_tol + rel_tol |a| over both regions.
void expect_same_gradients(const std::string& check, const Parameters& a, const Parameters& b, double abs_tol,
                           double rel_tol) {
  for (ParamKind kind : {ParamKind::Vector, ParamKind::Matrix})
    expect_gradient_close(check + (kind == ParamKind::Vector ? " (vectors)" : " (matrices)"), a.region(kind),
                          b.region(kind), a.table().region_elements(kind), abs_tol, rel_tol);
}

TEST(TrainingLoss, ScanCheckpointIntervalDoesNotChangeGradients) {
  const FixtureBatch f("hf-tiny-mamba");
  MambaModel model = MambaModel::load(test_data("hf-tiny-mamba"), LoadOptions{WeightType::F32});
  const GradRun base = mean_loss_gradients(model, f.ids, f.B, f.L);
  for (int64_t every : {int64_t(1), int64_t(5), f.L, f.L + 100}) {
    model.set_scan_checkpoint_every(every);
    const GradRun r = mean_loss_gradients(model, f.ids, f.B, f.L);
    EXPECT_NEAR(r.loss.sum, base.loss.sum, 1e-9 * std::fabs(base.loss.sum));
    expect_same_gradients("scan checkpoint every " + std::to_string(every), base.grads, r.grads, 1e-9, 1e-5);
  }
}

TEST(TrainingLoss, RepeatsBitForBitAndForwardOnlyLossAgrees) {
  const FixtureBatch f("hf-tiny-falcon-mamba");
  MambaModel model = MambaModel::load(test_data("hf-tiny-falcon-mamba"), LoadOptions{WeightType::F32});
  const GradRun a = mean_loss_gradients(model, f.ids, f.B, f.L);
  const GradRun b = mean_loss_gradients(model, f.ids, f.B, f.L);
  EXPECT_EQ(a.loss.sum, b.loss.sum);
  for (ParamKind kind : {ParamKind::Vector, ParamKind::Matrix})
    EXPECT_EQ(0, std::memcmp(a.grads.region(kind), b.grads.region(kind),
                             size_t(a.grads.table().region_elements(kind)) * sizeof(float)));
  // Without grads: the chunked inference forward, here in chunks of 5 tokens.
  const std::vector<int32_t> targets = next_token_targets(f.ids, f.B, f.L);
  model.set_chunk_length(5);
  const MambaModel::Loss forward_only = model.loss(f.ids.data(), targets.data(), f.B, f.L);
  EXPECT_EQ(forward_only.count, a.loss.count);
  EXPECT_NEAR(forward_only.sum, a.loss.sum, 1e-5 * std::fabs(a.loss.sum));
}

TEST(TrainingLoss, GradientsAccumulateWithTheirScale) {
  const FixtureBatch f("hf-tiny-mamba");
  MambaModel model = MambaModel::load(test_data("hf-tiny-mamba"), LoadOptions{WeightType::F32});
  const std::vector<int32_t> targets = next_token_targets(f.ids, f.B, f.L);
  Parameters whole(model.config(), WeightType::F32), halves(model.config(), WeightType::F32);
  model.loss(f.ids.data(), targets.data(), f.B, f.L, &whole, 1.0f);
  model.loss(f.ids.data(), targets.data(), f.B, f.L, &halves, 0.5f);
  model.loss(f.ids.data(), targets.data(), f.B, f.L, &halves, 0.5f);
  expect_same_gradients("two half-scaled passes vs one", whole, halves, 1e-9, 1e-5);
}

TEST(TrainingLoss, IgnoredTargetsDoNotCount) {
  const FixtureBatch f("hf-tiny-mamba");
  MambaModel model = MambaModel::load(test_data("hf-tiny-mamba"), LoadOptions{WeightType::F32});
  std::vector<int32_t> targets = next_token_targets(f.ids, f.B, f.L);
  const MambaModel::Loss all = model.loss(f.ids.data(), targets.data(), f.B, f.L);
  // Ignore sequence 1 entirely: the loss is that of sequence 0 alone.
  std::fill(targets.begin() + f.L, targets.end(), -1);
  const MambaModel::Loss first = model.loss(f.ids.data(), targets.data(), f.B, f.L);
  const MambaModel::Loss alone = model.loss(f.ids.data(), targets.data(), 1, f.L);
  EXPECT_EQ(first.count, f.L - 1);
  EXPECT_LT(first.count, all.count);
  EXPECT_NEAR(first.sum, alone.sum, 1e-5 * std::fabs(alone.sum));
}

TEST(TrainingLoss, BadInputIsRefused) {
  const FixtureBatch f("hf-tiny-mamba");
  MambaModel model = MambaModel::load(test_data("hf-tiny-mamba"), LoadOptions{WeightType::F32});
  std::vector<int32_t> targets = next_token_targets(f.ids, f.B, f.L);
  targets[3] = int32_t(model.config().vocab_size);
  Parameters grads(model.config(), WeightType::F32);
  expect_bad_input([&] { model.loss(f.ids.data(), targets.data(), f.B, f.L, &grads, 1.0f); },
                   {"target id 512", "position 3", "vocabulary"});
  MambaModel bf16 = MambaModel::load(test_data("hf-tiny-mamba"), LoadOptions{WeightType::BF16});
  targets[3] = 0;
  // The loss alone works on BF16 weights (within BF16's error of the F32 loss); gradients do not.
  EXPECT_NEAR(bf16.loss(f.ids.data(), targets.data(), f.B, f.L).mean(),
              model.loss(f.ids.data(), targets.data(), f.B, f.L).mean(), 1e-2);
  expect_bad_input([&] { bf16.loss(f.ids.data(), targets.data(), f.B, f.L, &grads, 1.0f); }, {"F32", "bf16"});
}

// ---- The grad command

TEST(GradCommand, WritesLossAndGradientsUnderTheCheckpointsNames) {
  const TensorMap ref = read_safetensors(test_data("hf-tiny-mamba") / "reference.safetensors").tensors;
  const Tensor& input = ref.at("input_ids");
  TempDir tmp;
  {
    std::ofstream ids_file(tmp / "ids.txt");
    const std::vector<int32_t> ids = to_ids(input);
    for (int64_t b = 0; b < input.dim(0); ++b) {
      for (int64_t t = 0; t < input.dim(1); ++t) ids_file << (t ? "," : "") << ids[size_t(b * input.dim(1) + t)];
      ids_file << "\n";
    }
  }
  // The HF checkpoint and the same weights as mamba_ssm publishes them (its own names).
  for (const std::string folder : {"hf-tiny-mamba", "mamba-ssm-tiny"}) {
    const std::filesystem::path out = tmp / (folder + ".safetensors");
    const CliRun run = run_cli({"grad", "--model", test_data(folder).string(), "--ids-file", (tmp / "ids.txt").string(),
                                "--out", out.string()});
    ASSERT_EQ(run.code, 0) << run.err;
    const TensorMap got = read_safetensors(out).tensors;
    expect_parity(folder + " grad command loss", ref.at("loss").data<float>(), got.at("loss").data<float>(), 1, 1e-5);
    const bool mamba_ssm = folder == "mamba-ssm-tiny";
    EXPECT_EQ(got.count("grad.backbone.embedding.weight"), size_t(mamba_ssm));
    EXPECT_EQ(got.count("grad.backbone.embeddings.weight"), size_t(!mamba_ssm));
    EXPECT_EQ(got.count("grad.lm_head.weight"), 0u) << "a tied head has no entry of its own";
    size_t grads = 0;
    for (const auto& [name, t] : got) {
      if (name == "loss") continue;
      ++grads;
      std::string hf_name = name.substr(5);
      if (hf_name == "backbone.embedding.weight") hf_name = "backbone.embeddings.weight";
      const Tensor& expected = ref.at("grad." + hf_name);
      ASSERT_EQ(t.shape(), expected.shape()) << name;
      expect_gradient_close(folder + " grad command " + name, expected.data<float>(), t.data<float>(), t.numel());
    }
    size_t in_fixture = 0;
    for (const auto& [name, t] : ref) in_fixture += name.rfind("grad.", 0) == 0;
    EXPECT_EQ(grads, in_fixture);
  }
  const CliRun short_input = run_cli({"grad", "--model", test_data("hf-tiny-mamba").string(), "--ids", "5", "--out",
                                      (tmp / "x.safetensors").string()});
  EXPECT_EQ(short_input.code, 1);
  EXPECT_NE(short_input.err.find("at least 2 ids"), std::string::npos) << short_input.err;
  EXPECT_FALSE(std::filesystem::exists(tmp / "x.safetensors"));
}

}  // namespace
}  // namespace mambacpp
