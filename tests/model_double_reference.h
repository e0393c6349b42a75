// A second model shape with odd sizes (d_model 40, d_inner 72, d_state 5, dt_rank 3, conv width 3,
// 3 layers, vocab 97, biases on, untied head), random weights for it, and a deliberately plain
// double-precision forward written from DESIGN.md's equations (no ops calls), from the empty context
// or a given initial state: the independent truth the model tests (forward, step, gradients by
// finite differences) compare against.
#pragma once

#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "io/config.h"
#include "io/safetensors.h"

namespace mambacpp::testing {

inline MambaConfig odd_config(bool falcon) {
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

inline std::vector<TensorInit> hf_tensor_list(const MambaConfig& c) {
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
inline std::pair<Weights, TensorMap> random_weights(const MambaConfig& c, uint64_t seed) {
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

inline double silu(double v) { return v / (1 + std::exp(-v)); }
inline double softplus(double v) { return std::log1p(std::exp(v)); }

// x [L][in] @ w[out, in]^T + bias -> [L][out]
inline Matrix linear(const Matrix& x, const std::vector<double>& w, const std::vector<double>* bias, int64_t out) {
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
inline void rmsnorm(Matrix& x, size_t c0, size_t n, const std::vector<double>* weight, double eps) {
  for (auto& row : x) {
    double ms = 0;
    for (size_t i = 0; i < n; ++i) ms += row[c0 + i] * row[c0 + i];
    const double scale = 1 / std::sqrt(ms / double(n) + eps);
    for (size_t i = 0; i < n; ++i) row[c0 + i] *= scale * (weight ? (*weight)[i] : 1.0);
  }
}

// The recurrent state one sequence starts from, per layer: conv [E * (W-1)] (each channel's last
// W-1 inputs, oldest first) and ssm [E * N], as InferenceState lays out one slot.
struct ReferenceState {
  std::vector<std::vector<double>> conv, ssm;
};

// Logits [L][V] of one sequence, from the empty context or from `initial`.
inline Matrix reference_logits(const MambaConfig& c, Weights& w, const std::vector<int32_t>& tokens,
                               const ReferenceState* initial = nullptr) {
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
          else if (initial) s += P("mixer.conv1d.weight")[e * W + k] * initial->conv[size_t(layer)][e * (W - 1) + t + k];
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
    std::vector<double> state = initial ? initial->ssm[size_t(layer)] : std::vector<double>(E * N, 0.0);
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

}  // namespace mambacpp::testing
