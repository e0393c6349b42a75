// A second shape with odd sizes (d_model 40, d_inner 72, d_state 5, dt_rank 3, conv width 3,
// 3 layers, vocab 97, biases on, untied head), random weights written as an HF checkpoint and
// loaded through the normal path, against a deliberately plain double-precision reference written
// here from DESIGN.md's equations (no ops calls). Also: chunked and split forwards agree.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/rng.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/mamba_model.h"
#include "model_test_support.h"

namespace mambacpp {
namespace {

using testing::expect_parity;

MambaConfig odd_config(bool falcon) {
  MambaConfig c;
  c.model_type = falcon ? "falcon_mamba" : "mamba";
  c.vocab_size = 97;
  c.d_model = 40;
  c.n_layer = 3;
  c.d_state = 5;
  c.d_inner = 72;
  c.d_conv = 3;
  c.dt_rank = 3;
  c.use_bias = true;
  c.use_conv_bias = true;
  c.norm_eps = 1e-5;
  c.mixer_rms_eps = 1e-6;
  c.tie_embeddings = false;
  return c;
}

using Weights = std::map<std::string, std::vector<double>>;

// The HF tensor list of a config, written out here independently of the model's own table, with
// each tensor's value range: activations stay O(1) so the tolerance below means something.
struct TensorInit {
  std::string name;
  Shape shape;
  double lo, hi;
};

std::vector<TensorInit> hf_tensor_list(const MambaConfig& c) {
  const int64_t V = c.vocab_size, D = c.d_model, E = c.d_inner, N = c.d_state, R = c.dt_rank, W = c.d_conv;
  auto inv_sqrt = [](int64_t n) { return 1.0 / std::sqrt(double(n)); };
  std::vector<TensorInit> list = {{"backbone.embeddings.weight", {V, D}, -1, 1}};
  for (int i = 0; i < int(c.n_layer); ++i) {
    const std::string p = "backbone.layers." + std::to_string(i) + ".";
    list.push_back({p + "norm.weight", {D}, 0.5, 1.5});
    list.push_back({p + "mixer.in_proj.weight", {2 * E, D}, -inv_sqrt(D), inv_sqrt(D)});
    list.push_back({p + "mixer.in_proj.bias", {2 * E}, -0.2, 0.2});
    list.push_back({p + "mixer.conv1d.weight", {E, 1, W}, -inv_sqrt(W), inv_sqrt(W)});
    list.push_back({p + "mixer.conv1d.bias", {E}, -0.2, 0.2});
    list.push_back({p + "mixer.x_proj.weight", {R + 2 * N, E}, -inv_sqrt(E), inv_sqrt(E)});
    list.push_back({p + "mixer.dt_proj.weight", {E, R}, -inv_sqrt(R), inv_sqrt(R)});
    list.push_back({p + "mixer.dt_proj.bias", {E}, -4, -1});  // softplus: dt in about [0.02, 0.3]
    list.push_back({p + "mixer.A_log", {E, N}, -0.5, 2});     // A in about [-7.4, -0.6]
    list.push_back({p + "mixer.D", {E}, 0.5, 1.5});
    list.push_back({p + "mixer.out_proj.weight", {D, E}, -inv_sqrt(E), inv_sqrt(E)});
    list.push_back({p + "mixer.out_proj.bias", {D}, -0.2, 0.2});
  }
  list.push_back({"backbone.norm_f.weight", {D}, 0.5, 1.5});
  list.push_back({"lm_head.weight", {V, D}, -inv_sqrt(D), inv_sqrt(D)});
  return list;
}

// Random values for every tensor: the doubles for the reference, their fp32 roundings for the file
// (the reference uses the rounded values, so both see the same weights).
std::pair<Weights, TensorMap> random_weights(const MambaConfig& c, uint64_t seed) {
  Rng rng(seed);
  Weights w;
  TensorMap tensors;
  for (const TensorInit& t : hf_tensor_list(c)) {
    Tensor tensor = Tensor::zeros(DType::F32, t.shape);
    std::vector<double>& values = w[t.name];
    values.resize(size_t(tensor.numel()));
    float* p = tensor.mutable_data<float>();
    for (size_t i = 0; i < values.size(); ++i) {
      p[i] = float(t.lo + (t.hi - t.lo) * rng.uniform());
      values[i] = p[i];
    }
    tensors[t.name] = tensor;
  }
  return {std::move(w), std::move(tensors)};
}

// ---- The plain reference: one sequence, sequential loops, double precision, DESIGN.md's equations.
using Matrix = std::vector<std::vector<double>>;  // [rows][cols]

double silu(double v) { return v / (1 + std::exp(-v)); }
double softplus(double v) { return std::log1p(std::exp(v)); }

// x [L][in] @ w[out, in]^T + bias -> [L][out]
Matrix linear(const Matrix& x, const std::vector<double>& w, const std::vector<double>* bias, int64_t out) {
  Matrix y(x.size(), std::vector<double>(size_t(out)));
  const size_t in = x[0].size();
  for (size_t t = 0; t < x.size(); ++t)
    for (int64_t o = 0; o < out; ++o) {
      double s = bias ? (*bias)[size_t(o)] : 0;
      for (size_t i = 0; i < in; ++i) s += x[t][i] * w[size_t(o) * in + i];
      y[t][size_t(o)] = s;
    }
  return y;
}

// RMSNorm of columns [c0, c0 + n) of every row, in place; weight may be null.
void rmsnorm(Matrix& x, size_t c0, size_t n, const std::vector<double>* weight, double eps) {
  for (auto& row : x) {
    double ms = 0;
    for (size_t i = 0; i < n; ++i) ms += row[c0 + i] * row[c0 + i];
    const double scale = 1 / std::sqrt(ms / double(n) + eps);
    for (size_t i = 0; i < n; ++i) row[c0 + i] *= scale * (weight ? (*weight)[i] : 1.0);
  }
}

// Logits [L][V] of one sequence.
Matrix reference_logits(const MambaConfig& c, Weights& w, const std::vector<int32_t>& tokens) {
  const size_t L = tokens.size(), D = size_t(c.d_model), E = size_t(c.d_inner), N = size_t(c.d_state),
               R = size_t(c.dt_rank), W = size_t(c.d_conv);
  Matrix x(L, std::vector<double>(D));
  for (size_t t = 0; t < L; ++t)
    for (size_t d = 0; d < D; ++d) x[t][d] = w["backbone.embeddings.weight"][size_t(tokens[t]) * D + d];
  for (int layer = 0; layer < int(c.n_layer); ++layer) {
    const std::string p = "backbone.layers." + std::to_string(layer) + ".";
    auto P = [&](const std::string& name) -> std::vector<double>& { return w.at(p + name); };
    Matrix h = x;
    rmsnorm(h, 0, D, &P("norm.weight"), c.norm_eps);
    const Matrix xz = linear(h, P("mixer.in_proj.weight"), &P("mixer.in_proj.bias"), int64_t(2 * E));
    Matrix xc(L, std::vector<double>(E));
    for (size_t t = 0; t < L; ++t)
      for (size_t e = 0; e < E; ++e) {
        double s = P("mixer.conv1d.bias")[e];
        for (size_t k = 0; k < W; ++k)
          if (t + k >= W - 1) s += P("mixer.conv1d.weight")[e * W + k] * xz[t + k - (W - 1)][e];
        xc[t][e] = silu(s);
      }
    Matrix dbc = linear(xc, P("mixer.x_proj.weight"), nullptr, int64_t(R + 2 * N));
    if (c.falcon()) {
      rmsnorm(dbc, 0, R, nullptr, c.mixer_rms_eps);
      rmsnorm(dbc, R, N, nullptr, c.mixer_rms_eps);
      rmsnorm(dbc, R + N, N, nullptr, c.mixer_rms_eps);
    }
    Matrix dt_low(L, std::vector<double>(R));
    for (size_t t = 0; t < L; ++t) std::copy_n(dbc[t].begin(), R, dt_low[t].begin());
    const Matrix dt = linear(dt_low, P("mixer.dt_proj.weight"), &P("mixer.dt_proj.bias"), int64_t(E));
    std::vector<double> state(E * N, 0.0);
    Matrix y(L, std::vector<double>(E));
    for (size_t t = 0; t < L; ++t)
      for (size_t e = 0; e < E; ++e) {
        const double delta = softplus(dt[t][e]);
        double out = P("mixer.D")[e] * xc[t][e];
        for (size_t n = 0; n < N; ++n) {
          const double A = -std::exp(P("mixer.A_log")[e * N + n]);
          double& s = state[e * N + n];
          s = std::exp(delta * A) * s + delta * dbc[t][R + n] * xc[t][e];
          out += s * dbc[t][R + N + n];
        }
        y[t][e] = out * silu(xz[t][E + e]);
      }
    const Matrix out = linear(y, P("mixer.out_proj.weight"), &P("mixer.out_proj.bias"), int64_t(D));
    for (size_t t = 0; t < L; ++t)
      for (size_t d = 0; d < D; ++d) x[t][d] += out[t][d];
  }
  rmsnorm(x, 0, D, &w.at("backbone.norm_f.weight"), c.norm_eps);
  return linear(x, w.at("lm_head.weight"), nullptr, c.vocab_size);
}

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
