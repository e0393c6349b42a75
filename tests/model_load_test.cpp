// Bad checkpoints and bad token ids: each is one BadInput naming the file and the tensor (or the id
// and its position), never a crash. Also the parameter table's figures (counts, bytes, names), the
// hf_tensors round trip and the random initialisation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/threads.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "model/mamba_model.h"
#include "model_test_support.h"

namespace mambacpp {
namespace {

using testing::expect_bad_input;
using testing::test_data;

struct TinyCheckpoint {
  MambaConfig config = read_config(test_data("hf-tiny-mamba") / "config.json");
  TensorMap tensors = read_safetensors(test_data("hf-tiny-mamba") / "model.safetensors").tensors;
};

constexpr const char* kSource = "some/dir/model.safetensors";
const std::string kD = "backbone.layers.1.mixer.D";

TEST(ModelErrors, MissingTensor) {
  TinyCheckpoint ck;
  ck.tensors.erase(kD);
  expect_bad_input([&] { MambaModel::from_tensors(ck.config, ck.tensors, kSource); },
                          {kSource, kD, "missing", "[128]"});
}

TEST(ModelErrors, ExtraTensor) {
  TinyCheckpoint ck;
  ck.tensors["backbone.layers.2.mixer.D"] = ck.tensors.at(kD);  // a layer the config does not have
  expect_bad_input([&] { MambaModel::from_tensors(ck.config, ck.tensors, kSource); },
                          {kSource, "backbone.layers.2.mixer.D", "unexpected"});
}

TEST(ModelErrors, MisShapedTensor) {
  TinyCheckpoint ck;
  ck.tensors[kD] = Tensor::zeros(DType::F32, {127});
  expect_bad_input([&] { MambaModel::from_tensors(ck.config, ck.tensors, kSource); },
                          {kSource, kD, "[127]", "[128]"});
  // The conv weight must keep PyTorch's [E, 1, W] in files.
  TinyCheckpoint conv;
  conv.tensors["backbone.layers.0.mixer.conv1d.weight"] = Tensor::zeros(DType::F32, {128, 4});
  expect_bad_input([&] { MambaModel::from_tensors(conv.config, conv.tensors, kSource); },
                          {"backbone.layers.0.mixer.conv1d.weight", "[128, 4]", "[128, 1, 4]"});
}

TEST(ModelErrors, NonFloatTensor) {
  TinyCheckpoint ck;
  ck.tensors[kD] = Tensor::zeros(DType::I64, {128});
  expect_bad_input([&] { MambaModel::from_tensors(ck.config, ck.tensors, kSource); }, {kSource, kD, "I64"});
}

TEST(ModelErrors, BothEmbeddingSpellings) {
  TinyCheckpoint ck;
  ck.tensors["backbone.embedding.weight"] = ck.tensors.at("backbone.embeddings.weight");
  expect_bad_input([&] { MambaModel::from_tensors(ck.config, ck.tensors, kSource); },
                          {kSource, "backbone.embedding.weight", "backbone.embeddings.weight", "twice"});
}

TEST(ModelErrors, TiedHeadThatDiffersFromTheEmbedding) {
  TinyCheckpoint ck;
  ck.tensors["lm_head.weight"] = Tensor::zeros(DType::F32, {512, 64});
  expect_bad_input([&] { MambaModel::from_tensors(ck.config, ck.tensors, kSource); },
                          {kSource, "lm_head.weight", "tie"});
  // Equal values (here a converted copy) are accepted and ignored, as in mamba_ssm's files.
  TinyCheckpoint same;
  same.tensors["lm_head.weight"] = same.tensors.at("backbone.embeddings.weight").to(DType::F32);
  EXPECT_NO_THROW(MambaModel::from_tensors(same.config, same.tensors, kSource));
}

TEST(ModelErrors, UntiedConfigNeedsTheHead) {
  TinyCheckpoint ck;
  ck.config.tie_embeddings = false;
  expect_bad_input([&] { MambaModel::from_tensors(ck.config, ck.tensors, kSource); },
                          {kSource, "lm_head.weight", "missing"});
}

// Through the files: the message names the weights file that was read.
TEST(ModelErrors, LoadNamesTheFile) {
  TinyCheckpoint ck;
  ck.tensors.erase(kD);
  testing::TempDir dir;
  std::vector<std::pair<std::string, Tensor>> list(ck.tensors.begin(), ck.tensors.end());
  write_safetensors(dir.path() / "model.safetensors", list);
  std::filesystem::copy_file(test_data("hf-tiny-mamba") / "config.json", dir.path() / "config.json");
  expect_bad_input([&] { MambaModel::load(dir.path()); }, {"model.safetensors", kD, "missing"});
}

TEST(ModelErrors, TokenOutsideTheVocabulary) {
  MambaModel model = MambaModel::load(test_data("hf-tiny-mamba"));
  const int32_t ids[2][3] = {{1, 2, 3}, {4, 512, 6}};
  std::vector<float> logits(2 * 512);
  InferenceState state = model.new_state(2);
  expect_bad_input([&] { model.forward(&ids[0][0], 2, 3, state, LogitsMode::Last, logits.data()); },
                          {"token id 512", "sequence 1", "position 1", "512 tokens"});
  const int32_t negative[2] = {-1, 0};
  expect_bad_input([&] { model.step(negative, state, logits.data()); }, {"token id -1", "sequence 0"});
  expect_bad_input([&] { model.forward(&ids[0][0], 2, 0, state, LogitsMode::Last, logits.data()); },
                          {"empty"});
}

// The 130m shape's figures, as published for state-spaces/mamba-130m: 129.1 M parameters with the
// tied embedding counted once; F32 weights take 4 bytes each (plus alignment and A).
TEST(ModelTable, Mamba130mShape) {
  const MambaConfig c = published_shape("130m");
  const ParameterTable table(c);
  EXPECT_EQ(table.parameter_count(), 129135360);
  std::printf("mamba-130m shape: %.1f M parameters\n", double(table.parameter_count()) / 1e6);
  const ParamSpec* conv = table.find("backbone.layers.23.mixer.conv1d.weight");
  ASSERT_NE(conv, nullptr);
  EXPECT_EQ(conv->shape, (Shape{1536, 4}));
  EXPECT_EQ(conv->file_shape, (Shape{1536, 1, 4}));
  EXPECT_EQ(table.find("backbone.embedding.weight"), table.find(ParamRole::Embedding));
  EXPECT_EQ(table.find(ParamRole::LmHead), nullptr);
  EXPECT_EQ(table.find(ParamRole::InProjBias, 0), nullptr);
}

// hf_tensors gives back exactly the file's tensors (names, shapes, values) of a loaded checkpoint.
TEST(ModelTable, HfTensorsRoundTrip) {
  TinyCheckpoint ck;
  MambaModel model = MambaModel::from_tensors(ck.config, ck.tensors, kSource);
  const auto out = model.hf_tensors(DType::F32);
  ASSERT_EQ(out.size(), ck.tensors.size());
  int64_t params = 0;
  for (const auto& [name, t] : out) {
    ASSERT_TRUE(ck.tensors.count(name)) << name;
    const Tensor& want = ck.tensors.at(name);
    ASSERT_EQ(t.shape(), want.shape()) << name;
    EXPECT_EQ(std::memcmp(t.raw(), want.raw(), want.nbytes()), 0) << name;
    params += t.numel();
  }
  EXPECT_EQ(model.parameter_count(), params);
  EXPECT_GE(model.weight_bytes(), size_t(params) * sizeof(float));
  // BF16 export rounds each value to nearest: within 2^-8 relative.
  for (const auto& [name, t] : model.hf_tensors(DType::BF16)) {
    const Tensor back = t.to(DType::F32);
    const float* want = ck.tensors.at(name).data<float>();
    int64_t off = 0;
    for (int64_t i = 0; i < t.numel(); ++i) off += std::fabs(back.data<float>()[i] - want[i]) > std::fabs(want[i]) * 0x1p-8;
    EXPECT_EQ(off, 0) << name << ": elements off by more than BF16 rounding";
  }
}

// MambaModel::random: HF-like values, the same for a seed whatever the thread count.
TEST(ModelRandom, HfLikeInitialisationReproducible) {
  MambaConfig c;
  c.vocab_size = 2000;  // the embedding spans two generator blocks
  c.d_model = 64;
  c.n_layer = 2;
  c.d_state = 6;
  c.d_inner = 96;
  c.d_conv = 3;
  c.dt_rank = 4;
  c.use_bias = true;
  const int threads = num_threads();
  set_num_threads(1);
  const auto one_thread = MambaModel::random(c, 7).hf_tensors(DType::F32);
  set_num_threads(2);
  const auto two_threads = MambaModel::random(c, 7).hf_tensors(DType::F32);
  const auto other_seed = MambaModel::random(c, 8).hf_tensors(DType::F32);
  set_num_threads(threads);

  ASSERT_EQ(one_thread.size(), two_threads.size());
  for (size_t i = 0; i < one_thread.size(); ++i)
    EXPECT_EQ(std::memcmp(one_thread[i].second.raw(), two_threads[i].second.raw(), one_thread[i].second.nbytes()), 0)
        << one_thread[i].first << " depends on the thread count";

  for (size_t i = 0; i < one_thread.size(); ++i) {
    const auto& [name, t] = one_thread[i];
    const float* v = t.data<float>();
    const int64_t n = t.numel();
    auto all = [&](auto pred) {
      for (int64_t k = 0; k < n; ++k)
        if (!pred(k, double(v[k]))) return false;
      return true;
    };
    auto ends_with = [&](const std::string& suffix) { return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0; };
    if (ends_with("embeddings.weight") || ends_with("in_proj.weight") || ends_with("x_proj.weight") ||
        ends_with("out_proj.weight")) {
      double sum = 0, sq = 0;
      for (int64_t k = 0; k < n; ++k) sum += v[k], sq += double(v[k]) * v[k];
      const double mean = sum / double(n), std = std::sqrt(sq / double(n) - mean * mean);
      // N(0, s^2) with s = 0.02, and 0.02 / sqrt(n_layer) for out_proj (pre-norm residual rescaling):
      // the sample std is within ~3/sqrt(2n) of s (relative), the mean within 3 s/sqrt(n).
      const double s = ends_with("out_proj.weight") ? 0.02 / std::sqrt(double(c.n_layer)) : 0.02;
      EXPECT_NEAR(std, s, s * 3 / std::sqrt(2.0 * double(n)) + 1e-4) << name;
      EXPECT_NEAR(mean, 0.0, 3 * s / std::sqrt(double(n))) << name;
      EXPECT_NE(std::memcmp(t.raw(), other_seed[i].second.raw(), t.nbytes()), 0) << name << " ignores the seed";
    } else if (ends_with("A_log")) {
      EXPECT_TRUE(all([&](int64_t k, double x) { return x == double(std::log(float(k % c.d_state + 1))); })) << name;
    } else if (ends_with(".D") || ends_with("norm.weight") || ends_with("norm_f.weight")) {
      EXPECT_TRUE(all([](int64_t, double x) { return x == 1.0; })) << name;
    } else if (ends_with("proj.bias") && !ends_with("dt_proj.bias")) {
      EXPECT_TRUE(all([](int64_t, double x) { return x == 0.0; })) << name;
    } else if (ends_with("dt_proj.bias")) {  // softplus(bias) = dt in [time_step_min, time_step_max]
      EXPECT_TRUE(all([&](int64_t, double x) {
        const double dt = std::log1p(std::exp(x));
        return dt >= c.time_step_min * 0.999 && dt <= c.time_step_max * 1.001;
      })) << name;
    } else if (ends_with("conv1d.weight") || ends_with("conv1d.bias")) {
      EXPECT_TRUE(all([&](int64_t, double x) { return std::fabs(x) <= 1 / std::sqrt(double(c.d_conv)); })) << name;
    } else if (ends_with("dt_proj.weight")) {
      EXPECT_TRUE(all([&](int64_t, double x) { return std::fabs(x) <= 1 / std::sqrt(double(c.dt_rank)); })) << name;
    } else {
      ADD_FAILURE() << "unexpected tensor " << name;
    }
  }
}

}  // namespace
}  // namespace mambacpp
