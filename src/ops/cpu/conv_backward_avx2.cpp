// causal_conv1d_silu backward, AVX2 + FMA: 8 channels per register, tokens in the outer loop and
// 8-channel blocks in the inner one (as the forward in ssm_avx2.cpp). Tokens are walked from the
// last to the first, so dx[t] = sum_k w[k] dpre[t + W-1 - k] is complete as soon as dpre[t] is
// known and each dx row is written once, never read back: the last W values of dpre of every block
// stay in a ring in scratch (zero past the end of the sequence). The pre-activation is recomputed
// from x; dweight and dbias are summed in scratch and added to the caller's at the end.
#include <immintrin.h>

#include "ops/cpu/kernels.h"
#include "ops/cpu/vec_math_avx2.h"
#include "ops/reference.h"

namespace mambacpp::ops::cpu {
namespace {

constexpr int kLanes = 8;

// d silu(u) / du = s (1 + u (1 - s)), s = sigmoid(u)
inline __m256 silu_grad8(__m256 u) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), u))));
  return _mm256_mul_ps(s, _mm256_fmadd_ps(u, _mm256_sub_ps(one, s), one));
}

// Channels [e0, e0 + 8 * blocks) of sequence b. With R = 8 * blocks floats per row, scratch holds
// (3W + 2) R floats: the weights, the dweight sums and the dpre ring, each [W][R], then a row of
// zeros (the inputs before the sequence) and the dbias sums.
void conv_backward_blocks(const ConvBackwardArgs& g, int b, int64_t e0, int64_t blocks, float* scratch) {
  const ConvArgs& a = g.forward;
  const int W = a.width;
  const int64_t L = a.length, R = blocks * kLanes;
  float* w = scratch;
  float* dw = w + W * R;
  float* ring = dw + W * R;  // dpre at position p in row p % W
  float* zeros = ring + W * R;
  float* db = zeros + R;
  for (int64_t c = 0; c < R; ++c)
    for (int k = 0; k < W; ++k) w[k * R + c] = a.weight[(e0 + c) * W + k];
  for (int64_t i = W * R; i < (3 * W + 2) * R; ++i) scratch[i] = 0.0f;
  auto inputs = [&](int64_t p) { return p < 0 ? zeros : a.x + (b * L + p) * a.x_ld + e0; };
  for (int64_t t = L - 1; t >= 0; --t) {
    const float* dout = g.dout + (b * L + t) * g.dout_ld + e0;
    float* dx = g.dx + (b * L + t) * g.dx_ld + e0;
    const int64_t slot_t = t % W;
    for (int64_t c = 0; c < R; c += kLanes) {
      __m256 u = a.bias ? _mm256_loadu_ps(a.bias + e0 + c) : _mm256_setzero_ps();
      for (int k = 0; k < W; ++k)
        u = _mm256_fmadd_ps(_mm256_load_ps(w + k * R + c), _mm256_loadu_ps(inputs(t - (W - 1) + k) + c), u);
      const __m256 dpre = _mm256_mul_ps(_mm256_loadu_ps(dout + c), silu_grad8(u));
      _mm256_store_ps(ring + slot_t * R + c, dpre);
      __m256 dxv = _mm256_setzero_ps();
      for (int k = 0; k < W; ++k) {
        int64_t slot = slot_t + (W - 1 - k);  // the row of position t + W-1 - k
        if (slot >= W) slot -= W;
        dxv = _mm256_fmadd_ps(_mm256_load_ps(w + k * R + c), _mm256_load_ps(ring + slot * R + c), dxv);
        float* dwk = dw + k * R + c;
        _mm256_store_ps(dwk, _mm256_fmadd_ps(dpre, _mm256_loadu_ps(inputs(t - (W - 1) + k) + c), _mm256_load_ps(dwk)));
      }
      _mm256_storeu_ps(dx + c, dxv);
      _mm256_store_ps(db + c, _mm256_add_ps(_mm256_load_ps(db + c), dpre));
    }
  }
  for (int64_t c = 0; c < R; ++c) {
    for (int k = 0; k < W && g.dweight; ++k) g.dweight[(e0 + c) * W + k] += dw[k * R + c];
    if (g.dbias) g.dbias[e0 + c] += db[c];
  }
}

}  // namespace

void conv_backward_channels_avx2(const ConvBackwardArgs& a, int b, int64_t e0, int64_t e1) {
  const int64_t blocks = (e1 - e0) / kLanes;
  if (blocks > 0)
    conv_backward_blocks(a, b, e0, blocks, thread_scratch(size_t((3 * a.forward.width + 2) * blocks * kLanes)));
  if (e0 + blocks * kLanes < e1) reference::causal_conv1d_silu_backward_channels(a, b, e0 + blocks * kLanes, e1);
}

}  // namespace mambacpp::ops::cpu
