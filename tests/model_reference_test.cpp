// The odd second shape of model_double_reference.h: random weights written as an HF checkpoint and
// loaded through the normal path, forward and step against the plain double-precision reference.
// Also: chunked and split forwards agree.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/rng.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/mamba_model.h"
#include "model_double_reference.h"
#include "model_test_support.h"

namespace mambacpp {
namespace {

using namespace testing;

// ---- The test

class OddShape : public ::testing::TestWithParam<bool> {};  // param: Falcon-Mamba

// fp32 against double: every op rounds with u = 2^-24 relative, dot products of at most 144 terms
// accumulate at most ~144 u of their terms' magnitude, and ~8 such ops per layer over 3 layers plus
// head compound to a worst case of a few 1e-5 of the logits' scale; the scan over 19 steps decays.
// We allow 1e-4 x max(1, max|logit|).
TEST_P(OddShape, ForwardAndStepMatchPlainDoubleReference) {
  const MambaConfig config = odd_config(GetParam());
  auto [weights, tensors] = random_weights(config, 42);
  testing::TempDir dir;
  write_hf_checkpoint(dir.path() / "model", config, tensors, std::nullopt);
  MambaModel model = MambaModel::load(dir.path() / "model");
  ASSERT_EQ(model.config().falcon(), GetParam());
  ASSERT_EQ(model.parameter_count(), [&] {
    int64_t n = 0;
    for (const auto& [name, v] : weights) n += int64_t(v.size());
    return n;
  }());

  constexpr int B = 3;
  constexpr int64_t L = 19;
  const int64_t V = config.vocab_size;
  Rng rng(7);
  std::vector<int32_t> ids(size_t(B * L));
  for (auto& id : ids) id = int32_t(rng.below(uint64_t(V)));

  std::vector<double> expected(size_t(B * L * V));
  double scale = 1;
  for (int b = 0; b < B; ++b) {
    const Matrix ref = reference_logits(config, weights, std::vector<int32_t>(ids.begin() + b * L, ids.begin() + (b + 1) * L));
    for (int64_t t = 0; t < L; ++t)
      for (int64_t v = 0; v < V; ++v) {
        expected[size_t((b * L + t) * V + v)] = ref[size_t(t)][size_t(v)];
        scale = std::max(scale, std::fabs(ref[size_t(t)][size_t(v)]));
      }
  }
  const double tol = 1e-4 * scale;
  const std::string name = std::string(GetParam() ? "odd-shape-falcon" : "odd-shape") + " ";

  for (int64_t chunk : {MambaModel::kDefaultChunkLength, int64_t(5)}) {
    model.set_chunk_length(chunk);
    std::vector<float> logits(size_t(B * L * V));
    InferenceState state = model.new_state(B);
    model.forward(ids.data(), B, L, state, LogitsMode::All, logits.data());
    expect_parity(name + "logits chunk " + std::to_string(chunk), expected.data(), logits.data(), B * L * V, tol);
  }

  std::vector<float> stepped(size_t(B * L * V)), step_logits(size_t(B * V));
  InferenceState state = model.new_state(B);
  for (int64_t t = 0; t < L; ++t) {
    const int32_t tokens[B] = {ids[size_t(t)], ids[size_t(L + t)], ids[size_t(2 * L + t)]};
    model.step(tokens, state, step_logits.data());
    for (int b = 0; b < B; ++b) std::copy_n(step_logits.data() + b * V, V, stepped.data() + (b * L + t) * V);
  }
  expect_parity(name + "step_logits", expected.data(), stepped.data(), B * L * V, tol);

  // Last mode gives the last row of each sequence.
  std::vector<float> last(size_t(B * V));
  InferenceState fresh = model.new_state(B);
  model.forward(ids.data(), B, L, fresh, LogitsMode::Last, last.data());
  for (int b = 0; b < B; ++b)
    expect_parity(name + "last_logits seq " + std::to_string(b), expected.data() + (b * L + L - 1) * V,
                  last.data() + b * V, V, tol);
}

INSTANTIATE_TEST_SUITE_P(Model, OddShape, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "FalconMamba" : "Mamba"; });

// The same input in one call, split into several calls carrying the state, and with a chunk length
// far below its length: the same logits and final state (only rounding may differ).
TEST(ModelChunking, SplitCallsAndShortChunksAgree) {
  MambaModel model = MambaModel::load(testing::test_data("hf-tiny-mamba"));
  const TensorMap ref = read_safetensors(testing::test_data("hf-tiny-mamba") / "reference.safetensors").tensors;
  const std::vector<int32_t> ids = testing::to_ids(ref.at("input_ids"));
  constexpr int B = 2;
  constexpr int64_t L = 37;
  const int64_t V = model.config().vocab_size;

  std::vector<float> whole(size_t(B * L * V));
  InferenceState whole_state = model.new_state(B);
  model.forward(ids.data(), B, L, whole_state, LogitsMode::All, whole.data());

  // Calls over [0, 10), [10, 11), [11, 37), each writing its rows of the [B, L, V] result.
  std::vector<float> split(size_t(B * L * V));
  InferenceState split_state = model.new_state(B);
  for (auto [t0, t1] : {std::pair<int64_t, int64_t>{0, 10}, {10, 11}, {11, L}}) {
    const int64_t n = t1 - t0;
    std::vector<int32_t> part(size_t(B * n));
    std::vector<float> out(size_t(B * n * V));
    for (int b = 0; b < B; ++b) std::copy_n(ids.begin() + b * L + t0, n, part.begin() + b * n);
    model.forward(part.data(), B, n, split_state, LogitsMode::All, out.data());
    for (int b = 0; b < B; ++b) std::copy_n(out.begin() + b * n * V, n * V, split.begin() + (b * L + t0) * V);
  }
  expect_parity("chunking split-calls logits", whole.data(), split.data(), B * L * V, 1e-5);

  model.set_chunk_length(4);
  std::vector<float> chunked(size_t(B * L * V));
  InferenceState chunked_state = model.new_state(B);
  model.forward(ids.data(), B, L, chunked_state, LogitsMode::All, chunked.data());
  expect_parity("chunking chunk-4 logits", whole.data(), chunked.data(), B * L * V, 1e-5);

  const int64_t conv_n = B * model.config().d_inner * (model.config().d_conv - 1);
  const int64_t ssm_n = B * model.config().d_inner * model.config().d_state;
  for (int l = 0; l < int(model.config().n_layer); ++l)
    for (const auto& [name, other] : {std::pair<std::string, InferenceState*>{"split-calls", &split_state},
                                      {"chunk-4", &chunked_state}}) {
      const std::string layer = " layer " + std::to_string(l);
      expect_parity("chunking " + name + " conv_state" + layer, whole_state.conv(l), other->conv(l), conv_n, 1e-5);
      expect_parity("chunking " + name + " ssm_state" + layer, whole_state.ssm(l), other->ssm(l), ssm_n, 1e-5);
    }
}

}  // namespace
}  // namespace mambacpp
