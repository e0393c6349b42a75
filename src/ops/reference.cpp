#include "ops/reference.h"

#include <algorithm>
#include <cmath>
#include <vector>

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

int conv_first_tap(int32_t position, int width) { return std::max(0, width - 1 - position); }

int conv_first_kept_state(const ConvArgs& a, int b) {
  if (!a.positions || a.length == 0) return 0;
  return std::max(0, conv_first_tap(a.positions[(b + 1) * a.length - 1], a.width) - 1);
}

void causal_conv1d_silu_channels(const ConvArgs& a, int b, int64_t e0, int64_t e1) {
  const int W = a.width;
  const int64_t L = a.length;
  const int kept = conv_first_kept_state(a, b);
  for (int64_t e = e0; e < e1; ++e) {
    float* state = a.state + (int64_t(b) * a.channels + e) * (W - 1);
    // Input at position p of this chunk; p < 0 reaches into the state (oldest first).
    auto input = [&](int64_t p) { return p < 0 ? state[W - 1 + p] : a.x[(b * L + p) * a.x_ld + e]; };
    for (int64_t t = 0; t < L; ++t) {
      float acc = a.bias ? a.bias[e] : 0.0f;
      const int first = a.positions ? conv_first_tap(a.positions[b * L + t], W) : 0;
      for (int k = first; k < W; ++k) acc += a.weight[e * W + k] * input(t - (W - 1) + k);
      a.out[(b * L + t) * a.out_ld + e] = silu(acc);
    }
    // Keep the last W-1 inputs (those of the last document). In increasing k, state[k] is written
    // only after every read of it (input(L - (W-1) + k) reads state[k + L] when that lies in the
    // old state).
    for (int k = 0; k < W - 1; ++k) state[k] = k < kept ? 0.0f : input(L - (W - 1) + k);
  }
}

void causal_conv1d_silu(const ConvArgs& a) {
  for (int b = 0; b < a.batch; ++b) causal_conv1d_silu_channels(a, b, 0, a.channels);
}

namespace {

// dt_in + dt_bias of channel e at a row: softplus of it is the step dt.
float scan_dt_input(const ScanArgs& a, int64_t row, int64_t e) {
  return a.dt[row * a.dt_ld + e] + (a.dt_bias ? a.dt_bias[e] : 0.0f);
}

// One token of channel e: h = exp(dt A) h + dt B x; returns the output before the gate,
// sum_n h C + D x. The forward and the backward's recomputation both use it: the same states.
float scan_token(const ScanArgs& a, int64_t row, int64_t e, float* h) {
  const int64_t N = a.d_state;
  const float x = a.x[row * a.x_ld + e];
  const float dt = softplus(scan_dt_input(a, row, e));
  const float* Bm = a.Bm + row * a.bc_ld;
  const float* Cm = a.Cm + row * a.bc_ld;
  float y = 0.0f;
  for (int64_t n = 0; n < N; ++n) {
    h[n] = std::exp(dt * a.A[e * N + n]) * h[n] + dt * Bm[n] * x;
    y += h[n] * Cm[n];
  }
  return y + (a.D ? a.D[e] : 0.0f) * x;
}

}  // namespace

float* scan_checkpoint(const ScanArgs& a, int b, int64_t k) {
  const int64_t count = (a.length + a.checkpoint_every - 1) / a.checkpoint_every;
  return a.checkpoints + (int64_t(b) * count + k) * a.d_inner * a.d_state;
}

void selective_scan_channels(const ScanArgs& a, int b, int64_t e0, int64_t e1) {
  MAMBACPP_CHECK(!a.checkpoints || a.checkpoint_every > 0);
  const int64_t N = a.d_state, L = a.length;
  // Tokens between saved states; without checkpoints one span of all tokens, so the test for
  // saving stays out of the token loop.
  const int64_t span = a.checkpoints ? a.checkpoint_every : L;
  for (int64_t e = e0; e < e1; ++e) {
    float* h = a.state + (int64_t(b) * a.d_inner + e) * N;
    for (int64_t t0 = 0; t0 < L; t0 += span) {
      if (a.checkpoints) std::copy(h, h + N, scan_checkpoint(a, b, t0 / span) + e * N);
      for (int64_t t = t0; t < std::min(L, t0 + span); ++t) {
        const int64_t row = b * L + t;
        if (a.positions && a.positions[row] == 0) std::fill_n(h, N, 0.0f);  // a new document
        const float y = scan_token(a, row, e, h);
        a.y[row * a.y_ld + e] = a.z ? y * silu(a.z[row * a.z_ld + e]) : y;
      }
    }
  }
}

void selective_scan(const ScanArgs& a) {
  for (int b = 0; b < a.batch; ++b) selective_scan_channels(a, b, 0, a.d_inner);
}

// ---------------------------------------------------------------------------------------------
// Backward twins

namespace {

const float* f32_data(const Weight& w) {
  MAMBACPP_CHECK(w.dtype == DType::F32 && "training needs F32 weights");
  return static_cast<const float*>(w.data);
}

// d silu(u) / du = s + u s (1 - s), s = sigmoid(u)
float silu_grad(float u) {
  const float s = 1.0f / (1.0f + std::exp(-u));
  return s * (1.0f + u * (1.0f - s));
}

}  // namespace

void embedding_backward(const int32_t* ids, int64_t M, const float* dout, int64_t dout_ld, int64_t D, float* dtable) {
  for (int64_t m = 0; m < M; ++m) {
    MAMBACPP_CHECK(ids[m] >= 0);
    for (int64_t d = 0; d < D; ++d) dtable[int64_t(ids[m]) * D + d] += dout[m * dout_ld + d];
  }
}

void rmsnorm_backward(const float* x, int64_t x_ld, int64_t M, int64_t D, const float* weight, float eps,
                      const float* dy, int64_t dy_ld, float* dx, int64_t dx_ld, bool accumulate_dx, float* dweight) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * x_ld;
    const float* dyr = dy + m * dy_ld;
    float* dxr = dx + m * dx_ld;
    float sum_sq = 0.0f;
    for (int64_t d = 0; d < D; ++d) sum_sq += xr[d] * xr[d];
    const float r = 1.0f / std::sqrt(sum_sq / float(D) + eps);
    // With xhat = x r and g = dy w: dx = r (g - xhat mean(g xhat)).
    float g_dot_xhat = 0.0f;
    for (int64_t d = 0; d < D; ++d) g_dot_xhat += dyr[d] * (weight ? weight[d] : 1.0f) * (xr[d] * r);
    const float mean_g_xhat = g_dot_xhat / float(D);
    for (int64_t d = 0; d < D; ++d) {
      const float xhat = xr[d] * r;
      const float g = dyr[d] * (weight ? weight[d] : 1.0f);
      if (dweight) dweight[d] += dyr[d] * xhat;
      const float v = r * (g - xhat * mean_g_xhat);
      dxr[d] = accumulate_dx ? dxr[d] + v : v;
    }
  }
}

void linear_backward(const float* x, int64_t x_ld, int64_t M, const Weight& w, const float* dy, int64_t dy_ld,
                     float* dx, int64_t dx_ld, bool accumulate_dx, float* dw, float* dbias) {
  const float* W = f32_data(w);
  const int64_t O = w.out_features, K = w.in_features;
  for (int64_t m = 0; m < M && dx; ++m)
    for (int64_t k = 0; k < K; ++k) {
      float acc = 0.0f;
      for (int64_t o = 0; o < O; ++o) acc += dy[m * dy_ld + o] * W[o * K + k];
      float& dst = dx[m * dx_ld + k];
      dst = accumulate_dx ? dst + acc : acc;
    }
  for (int64_t o = 0; o < O && dw; ++o)
    for (int64_t k = 0; k < K; ++k) {
      float acc = 0.0f;
      for (int64_t m = 0; m < M; ++m) acc += dy[m * dy_ld + o] * x[m * x_ld + k];
      dw[o * K + k] += acc;
    }
  for (int64_t o = 0; o < O && dbias; ++o) {
    float acc = 0.0f;
    for (int64_t m = 0; m < M; ++m) acc += dy[m * dy_ld + o];
    dbias[o] += acc;
  }
}

void conv_state_backward_channel(const ConvBackwardArgs& g, int b, int64_t e, const float* dpre, int64_t stride) {
  const ConvArgs& a = g.forward;
  const int W = a.width, S = W - 1;
  const int64_t L = a.length, slot = (int64_t(b) * a.channels + e) * S;
  float* dstate = g.dstate ? g.dstate + slot : nullptr;
  if (dstate) {
    std::fill_n(dstate, S, 0.0f);
    for (int64_t t = 0; t < std::min<int64_t>(L, S); ++t) {
      const int first = a.positions ? conv_first_tap(a.positions[b * L + t], W) : 0;
      for (int k = first; k < S - t; ++k) dstate[t + k] += a.weight[e * W + k] * dpre[t * stride];  // p = t - S + k < 0
    }
  }
  if (!g.dstate_final) return;
  const float* dfinal = g.dstate_final + slot;
  for (int k = conv_first_kept_state(a, b); k < S; ++k) {
    const int64_t p = L - S + k;
    if (p >= 0) g.dx[(b * L + p) * g.dx_ld + e] += dfinal[k];
    else if (dstate) dstate[S + p] += dfinal[k];
  }
}

void causal_conv1d_silu_backward_channels(const ConvBackwardArgs& g, int b, int64_t e0, int64_t e1) {
  const ConvArgs& a = g.forward;
  const int W = a.width;
  const int64_t L = a.length;
  thread_local std::vector<float> first_dpre;  // dL/d(pre-activation) of tokens 0 .. W-2
  first_dpre.assign(size_t(W), 0.0f);
  for (int64_t e = e0; e < e1; ++e) {
    const float* w = a.weight + e * W;
    const float* state = a.state ? a.state + (int64_t(b) * a.channels + e) * (W - 1) : nullptr;
    // Input at position p of the sequence; p < 0 reaches into the initial state (zeros when null).
    auto input = [&](int64_t p) {
      return p >= 0 ? a.x[(b * L + p) * a.x_ld + e] : state ? state[W - 1 + p] : 0.0f;
    };
    auto dx = [&](int64_t p) -> float& { return g.dx[(b * L + p) * g.dx_ld + e]; };
    for (int64_t t = 0; t < L; ++t) dx(t) = 0.0f;
    for (int64_t t = 0; t < L; ++t) {
      const int first = a.positions ? conv_first_tap(a.positions[b * L + t], W) : 0;
      float u = a.bias ? a.bias[e] : 0.0f;
      for (int k = first; k < W; ++k) u += w[k] * input(t - (W - 1) + k);
      const float dpre = g.dout[(b * L + t) * g.dout_ld + e] * silu_grad(u);
      if (t < W - 1) first_dpre[size_t(t)] = dpre;
      for (int k = first; k < W; ++k) {
        const int64_t p = t - (W - 1) + k;
        if (p >= 0) dx(p) += w[k] * dpre;
        if (g.dweight) g.dweight[e * W + k] += dpre * input(p);
      }
      if (g.dbias) g.dbias[e] += dpre;
    }
    if (g.dstate || g.dstate_final) conv_state_backward_channel(g, b, e, first_dpre.data(), 1);
  }
}

void causal_conv1d_silu_backward(const ConvBackwardArgs& a) {
  for (int b = 0; b < a.forward.batch; ++b) causal_conv1d_silu_backward_channels(a, b, 0, a.forward.channels);
}

double lm_head_cross_entropy(const float* h, int64_t h_ld, int64_t M, const Weight& w, const int32_t* targets,
                             float grad_scale, float* dh, int64_t dh_ld, float* dw, float* /*scratch*/) {
  const float* W = f32_data(w);
  const int64_t V = w.out_features, D = w.in_features;
  std::vector<float> logits(static_cast<size_t>(V));
  double loss = 0.0;
  for (int64_t m = 0; m < M; ++m) {
    const float* hr = h + m * h_ld;
    const int32_t target = targets[m];
    MAMBACPP_CHECK(target < V);
    for (int64_t d = 0; d < D && dh; ++d) dh[m * dh_ld + d] = 0.0f;
    if (target < 0) continue;  // ignored: no loss, no gradient
    for (int64_t j = 0; j < V; ++j) {
      float acc = 0.0f;
      for (int64_t d = 0; d < D; ++d) acc += hr[d] * W[j * D + d];
      logits[j] = acc;
    }
    float max = logits[0];
    for (float l : logits) max = std::max(max, l);
    double sum_exp = 0.0;
    for (float l : logits) sum_exp += std::exp(double(l - max));
    loss += double(max) + std::log(sum_exp) - double(logits[target]);
    if (!dh) continue;
    // d loss / d logit_j = softmax_j - [j == target]
    for (int64_t j = 0; j < V; ++j) {
      const float softmax = float(std::exp(double(logits[j] - max)) / sum_exp);
      const float dlogit = grad_scale * (softmax - (j == target ? 1.0f : 0.0f));
      for (int64_t d = 0; d < D; ++d) {
        dh[m * dh_ld + d] += dlogit * W[j * D + d];
        if (dw) dw[j * D + d] += dlogit * hr[d];
      }
    }
  }
  return loss;
}

// ---------------------------------------------------------------------------------------------
// Selective scan backward

namespace {

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// What one channel's reverse scan carries from token to token and sums over tokens.
struct ScanChannelGrads {
  float* dh = nullptr;  // [N] dL/d(state after the token about to be processed)
  float* dA = nullptr;  // [N] dL/dA[e, :]
  float dD = 0.0f, ddt_bias = 0.0f;
  float* dB = nullptr;  // dB of token t (of this sequence) at dB[t * ld], dC likewise; both added to
  float* dC = nullptr;
  int64_t ld = 0;
};

// Whether the token of `row` starts a document: the state before it is zero (ScanArgs::positions).
bool starts_document(const ScanArgs& a, int64_t row) { return a.positions && a.positions[row] == 0; }

// The reverse scan of channel e of sequence b over tokens [t0, t1). states: (t1 - t0 + 2) N
// floats whose first N hold the state before t0; the states after each token are recomputed into
// the next, and the last N are zeros (the state before a document's first token). Writes dx, ddt
// and dz of these tokens and adds to everything in `grads`.
void scan_backward_span(const ScanBackwardArgs& g, int b, int64_t e, int64_t t0, int64_t t1, float* states,
                        ScanChannelGrads& grads) {
  const ScanArgs& a = g.forward;
  const int64_t N = a.d_state, L = a.length;
  const float* zeros = states + (t1 - t0 + 1) * N;
  std::fill_n(states + (t1 - t0 + 1) * N, N, 0.0f);
  for (int64_t t = t0; t < t1; ++t) {
    float* h = states + (t - t0 + 1) * N;
    if (starts_document(a, b * L + t)) std::fill_n(h, N, 0.0f);
    else std::copy(h - N, h, h);
    scan_token(a, b * L + t, e, h);
  }
  const float D = a.D ? a.D[e] : 0.0f;
  for (int64_t t = t1 - 1; t >= t0; --t) {
    const int64_t row = b * L + t;
    const bool restart = starts_document(a, row);
    const float* h = states + (t - t0 + 1) * N;                         // h_t
    const float* h_prev = restart ? zeros : states + (t - t0) * N;      // h_{t-1}, as the update read it
    const float* Bm = a.Bm + row * a.bc_ld;
    const float* Cm = a.Cm + row * a.bc_ld;
    const float x = a.x[row * a.x_ld + e], dt_in = scan_dt_input(a, row, e), dt = softplus(dt_in);
    const float dy = g.dy[row * g.dy_ld + e];
    float dy_raw = dy;  // dL/d(output before the gate)
    if (a.z) {
      const float z = a.z[row * a.z_ld + e], s = sigmoid(z);
      float y_raw = D * x;
      for (int64_t n = 0; n < N; ++n) y_raw += h[n] * Cm[n];
      g.dz[row * g.dz_ld + e] = dy * y_raw * s * (1.0f + z * (1.0f - s));
      dy_raw = dy * z * s;
    }
    float dh_dot_B = 0.0f, d_dt = 0.0f;  // sum_n dh B, dL/d(dt)
    for (int64_t n = 0; n < N; ++n) {
      const float A = a.A[e * N + n], decay = std::exp(dt * A);
      float& dh = grads.dh[n];
      dh += dy_raw * Cm[n];  // now dL/dh_t
      grads.dC[t * grads.ld + n] += dy_raw * h[n];
      grads.dB[t * grads.ld + n] += dh * dt * x;
      dh_dot_B += dh * Bm[n];
      d_dt += dh * (Bm[n] * x + A * decay * h_prev[n]);
      grads.dA[n] += dh * dt * decay * h_prev[n];
      dh *= decay;  // dL/dh_{t-1} through h_t
    }
    if (restart) std::fill_n(grads.dh, N, 0.0f);  // h_{t-1} did not reach h_t
    g.dx[row * g.dx_ld + e] = dy_raw * D + dt * dh_dot_B;
    const float d_dt_in = d_dt * sigmoid(dt_in);  // softplus' = sigmoid
    g.ddt[row * g.ddt_ld + e] = d_dt_in;
    grads.ddt_bias += d_dt_in;
    grads.dD += dy_raw * x;
  }
}

// Channel e of sequence b, in spans of `span` tokens from the last (span a multiple of
// checkpoint_every, or at least the length: one span from checkpoint 0). The reverse scan starts
// from dstate_final (or zero) and leaves dL/d(initial state) in dstate (when not null). Adds the
// tokens' dB and dC to the rows `grads` points at and returns the sums over tokens in grads (dh
// and dA point into a per-thread scratch, valid until the next call on this thread).
void scan_backward_channel(const ScanBackwardArgs& g, int b, int64_t e, int64_t span, ScanChannelGrads& grads) {
  const ScanArgs& a = g.forward;
  const int64_t N = a.d_state, L = a.length, slot = (int64_t(b) * a.d_inner + e) * N;
  thread_local std::vector<float> scratch;  // grows, never shrinks: no allocation per training step
  scratch.resize(std::max(scratch.size(), size_t((std::min(span, L) + 4) * N)));
  grads.dh = scratch.data(), grads.dA = grads.dh + N;
  float* states = grads.dA + N;
  std::fill(grads.dh, grads.dh + 2 * N, 0.0f);
  if (g.dstate_final) std::copy_n(g.dstate_final + slot, N, grads.dh);
  grads.dD = grads.ddt_bias = 0.0f;
  for (int64_t t0 = (L - 1) / span * span; t0 >= 0; t0 -= span) {
    const float* saved = scan_checkpoint(a, b, t0 / a.checkpoint_every) + e * N;
    std::copy(saved, saved + N, states);
    scan_backward_span(g, b, e, t0, std::min(L, t0 + span), states, grads);
  }
  if (g.dstate) std::copy_n(grads.dh, N, g.dstate + slot);
}

void check_scan_backward_args(const ScanBackwardArgs& g) {
  const ScanArgs& a = g.forward;
  MAMBACPP_CHECK(a.checkpoints && a.checkpoint_every > 0);
  MAMBACPP_CHECK(g.dy && g.dx && g.ddt && g.dB && g.dC && g.dA_log && (!a.z || g.dz) && (!a.D || g.dD) &&
                 (!a.dt_bias || g.ddt_bias));
}

}  // namespace

void pass_state_gradient(const ScanBackwardArgs& g) {
  const int64_t count = g.forward.batch * g.forward.d_inner * g.forward.d_state;
  if (g.dstate && g.dstate_final) std::copy_n(g.dstate_final, count, g.dstate);
  else if (g.dstate) std::fill_n(g.dstate, count, 0.0f);
}

void selective_scan_backward(const ScanBackwardArgs& g) {
  check_scan_backward_args(g);
  const ScanArgs& a = g.forward;
  const int64_t N = a.d_state, L = a.length;
  for (int64_t row = 0; row < a.batch * L; ++row) {
    std::fill_n(g.dB + row * g.dbc_ld, N, 0.0f);
    std::fill_n(g.dC + row * g.dbc_ld, N, 0.0f);
  }
  if (L == 0) return pass_state_gradient(g);
  for (int b = 0; b < a.batch; ++b)
    for (int64_t e = 0; e < a.d_inner; ++e) {
      ScanChannelGrads grads{.dB = g.dB + b * L * g.dbc_ld, .dC = g.dC + b * L * g.dbc_ld, .ld = g.dbc_ld};
      scan_backward_channel(g, b, e, L, grads);
      for (int64_t n = 0; n < N; ++n) g.dA_log[e * N + n] += grads.dA[n] * a.A[e * N + n];  // dA/dA_log = A
      if (a.D) g.dD[e] += grads.dD;
      if (a.dt_bias) g.ddt_bias[e] += grads.ddt_bias;
    }
}

void selective_scan_backward_channels(const ScanBackwardArgs& g, int b, int64_t e0, int64_t e1, float* dbc,
                                      float* dparams) {
  check_scan_backward_args(g);
  const ScanArgs& a = g.forward;
  const int64_t N = a.d_state, E = a.d_inner;
  if (a.length == 0) return;
  for (int64_t e = e0; e < e1; ++e) {
    ScanChannelGrads grads{.dB = dbc, .dC = dbc + N, .ld = 2 * N};
    scan_backward_channel(g, b, e, a.checkpoint_every, grads);
    for (int64_t n = 0; n < N; ++n) dparams[e * N + n] = grads.dA[n] * a.A[e * N + n];
    dparams[E * N + e] = grads.dD;
    dparams[E * N + E + e] = grads.ddt_bias;
  }
}

}  // namespace mambacpp::ops::reference
