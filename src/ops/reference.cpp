#include "ops/reference.h"

#include <cmath>

#include "core/half.h"

namespace mambacpp::ops::reference {

namespace {

float weight_at(const Weight& w, int64_t i) {
  switch (w.dtype) {
    case DType::F32: return static_cast<const float*>(w.data)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
    default: break;
  }
  MAMBACPP_CHECK(false && "weight dtype must be F32, BF16 or F16");
}

float silu(float x) { return x / (1.0f + std::exp(-x)); }

// As torch.nn.functional.softplus with beta 1, threshold 20.
float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

}  // namespace

void embedding(const int32_t* ids, int64_t M, const Weight& table, float* out, int64_t out_ld) {
  const int64_t D = table.in_features;
  for (int64_t m = 0; m < M; ++m) {
    MAMBACPP_CHECK(ids[m] >= 0 && ids[m] < table.out_features);
    for (int64_t d = 0; d < D; ++d) out[m * out_ld + d] = weight_at(table, int64_t(ids[m]) * D + d);
  }
}

void rmsnorm(const float* x, int64_t x_ld, int64_t M, int64_t D, const float* weight, float eps, float* y,
             int64_t y_ld) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * x_ld;
    float* yr = y + m * y_ld;
    float sum_sq = 0.0f;
    for (int64_t d = 0; d < D; ++d) sum_sq += xr[d] * xr[d];
    const float inv = 1.0f / std::sqrt(sum_sq / float(D) + eps);
    for (int64_t d = 0; d < D; ++d) yr[d] = xr[d] * inv * (weight ? weight[d] : 1.0f);
  }
}

void linear(const float* x, int64_t x_ld, int64_t M, const Weight& w, const float* bias, float* y, int64_t y_ld,
            bool accumulate) {
  const int64_t K = w.in_features;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t o = 0; o < w.out_features; ++o) {
      float acc = bias ? bias[o] : 0.0f;
      for (int64_t k = 0; k < K; ++k) acc += x[m * x_ld + k] * weight_at(w, o * K + k);
      float& dst = y[m * y_ld + o];
      dst = accumulate ? dst + acc : acc;
    }
  }
}

void causal_conv1d_silu_channels(const ConvArgs& a, int b, int64_t e0, int64_t e1) {
  const int W = a.width;
  const int64_t L = a.length;
  for (int64_t e = e0; e < e1; ++e) {
    float* state = a.state + (int64_t(b) * a.channels + e) * (W - 1);
    // Input at position p of this chunk; p < 0 reaches into the state (oldest first).
    auto input = [&](int64_t p) { return p < 0 ? state[W - 1 + p] : a.x[(b * L + p) * a.x_ld + e]; };
    for (int64_t t = 0; t < L; ++t) {
      float acc = a.bias ? a.bias[e] : 0.0f;
      for (int k = 0; k < W; ++k) acc += a.weight[e * W + k] * input(t - (W - 1) + k);
      a.out[(b * L + t) * a.out_ld + e] = silu(acc);
    }
    // Keep the last W-1 inputs. In increasing k, state[k] is written only after every read of
    // it (input(L - (W-1) + k) reads state[k + L] when that lies in the old state).
    for (int k = 0; k < W - 1; ++k) state[k] = input(L - (W - 1) + k);
  }
}

void causal_conv1d_silu(const ConvArgs& a) {
  for (int b = 0; b < a.batch; ++b) causal_conv1d_silu_channels(a, b, 0, a.channels);
}

void selective_scan_channels(const ScanArgs& a, int b, int64_t e0, int64_t e1) {
  const int64_t N = a.d_state, L = a.length;
  for (int64_t e = e0; e < e1; ++e) {
    float* h = a.state + (int64_t(b) * a.d_inner + e) * N;
    for (int64_t t = 0; t < L; ++t) {
      const int64_t row = b * L + t;
      const float x = a.x[row * a.x_ld + e];
      const float dt = softplus(a.dt[row * a.dt_ld + e] + (a.dt_bias ? a.dt_bias[e] : 0.0f));
      const float* Bm = a.Bm + row * a.bc_ld;
      const float* Cm = a.Cm + row * a.bc_ld;
      float y = 0.0f;
      for (int64_t n = 0; n < N; ++n) {
        h[n] = std::exp(dt * a.A[e * N + n]) * h[n] + dt * Bm[n] * x;
        y += h[n] * Cm[n];
      }
      y += (a.D ? a.D[e] : 0.0f) * x;
      a.y[row * a.y_ld + e] = a.z ? y * silu(a.z[row * a.z_ld + e]) : y;
    }
  }
}

void selective_scan(const ScanArgs& a) {
  for (int b = 0; b < a.batch; ++b) selective_scan_channels(a, b, 0, a.d_inner);
}

}  // namespace mambacpp::ops::reference
