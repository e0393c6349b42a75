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
// 4W R floats: the weights, the dweight sums and the dpre ring, each [W][R], then the initial
// state [W-1][R] (zeros when there is none) and the dbias sums. With positions, a tap reaching
// before its token's document reads nothing (the loops over k start at the first tap inside it),
// and after a document's first token the ring is cleared: no earlier token's dx sees the dpre of
// a later document. kPositions: whether a.positions is set (a template argument, so the path
// without packed documents is the one it was before they existed).
template <bool kPositions>
[[gnu::noinline]] void conv_backward_blocks(const ConvBackwardArgs& g, int b, int64_t e0, int64_t blocks, float* scratch) {
  const ConvArgs& a = g.forward;
  const int W = a.width;
  const int64_t L = a.length, R = blocks * kLanes;
  float* w = scratch;
  float* dw = w + W * R;
  float* ring = dw + W * R;  // dpre at position p in row p % W
  float* old = ring + W * R;
  float* db = old + (W - 1) * R;
  const float* state = a.state ? a.state + (int64_t(b) * a.channels + e0) * (W - 1) : nullptr;
  for (int64_t c = 0; c < R; ++c)
    for (int k = 0; k < W; ++k) {
      w[k * R + c] = a.weight[(e0 + c) * W + k];
      if (k < W - 1) old[k * R + c] = state ? state[c * (W - 1) + k] : 0.0f;
    }
  for (int64_t i = W * R; i < 3 * W * R; ++i) scratch[i] = 0.0f;
  for (int64_t c = 0; c < R; ++c) db[c] = 0.0f;
  auto inputs = [&](int64_t p) { return p < 0 ? old + (W - 1 + p) * R : a.x + (b * L + p) * a.x_ld + e0; };
  for (int64_t t = L - 1; t >= 0; --t) {
    const float* dout = g.dout + (b * L + t) * g.dout_ld + e0;
    float* dx = g.dx + (b * L + t) * g.dx_ld + e0;
    const int64_t slot_t = t % W;
    const int first = kPositions ? reference::conv_first_tap(a.positions[b * L + t], W) : 0;
    for (int64_t c = 0; c < R; c += kLanes) {
      __m256 u = a.bias ? _mm256_loadu_ps(a.bias + e0 + c) : _mm256_setzero_ps();
      for (int k = first; k < W; ++k)
        u = _mm256_fmadd_ps(_mm256_load_ps(w + k * R + c), _mm256_loadu_ps(inputs(t - (W - 1) + k) + c), u);
      const __m256 dpre = _mm256_mul_ps(_mm256_loadu_ps(dout + c), silu_grad8(u));
      _mm256_store_ps(ring + slot_t * R + c, dpre);
      __m256 dxv = _mm256_setzero_ps();
      for (int k = 0; k < W; ++k) {
        int64_t slot = slot_t + (W - 1 - k);  // the row of position t + W-1 - k
        if (slot >= W) slot -= W;
        dxv = _mm256_fmadd_ps(_mm256_load_ps(w + k * R + c), _mm256_load_ps(ring + slot * R + c), dxv);
        if (k < first) continue;  // the tap reached before the document: it read nothing
        float* dwk = dw + k * R + c;
        _mm256_store_ps(dwk, _mm256_fmadd_ps(dpre, _mm256_loadu_ps(inputs(t - (W - 1) + k) + c), _mm256_load_ps(dwk)));
      }
      _mm256_storeu_ps(dx + c, dxv);
      _mm256_store_ps(db + c, _mm256_add_ps(_mm256_load_ps(db + c), dpre));
    }
    if (kPositions && a.positions[b * L + t] == 0)
      for (int64_t i = 0; i < W * R; ++i) ring[i] = 0.0f;
  }
  for (int64_t c = 0; c < R; ++c) {
    for (int k = 0; k < W && g.dweight; ++k) g.dweight[(e0 + c) * W + k] += dw[k * R + c];
    if (g.dbias) g.dbias[e0 + c] += db[c];
  }
  // The ring's rows 0 .. W-2 now hold the dpre of tokens 0 .. W-2 (or zeros).
  if (g.dstate || g.dstate_final)
    for (int64_t c = 0; c < R; ++c) reference::conv_state_backward_channel(g, b, e0 + c, ring + c, R);
}

}  // namespace

void conv_backward_channels_avx2(const ConvBackwardArgs& a, int b, int64_t e0, int64_t e1) {
  const int64_t blocks = (e1 - e0) / kLanes;
  float* scratch = blocks > 0 ? thread_scratch(size_t(4 * a.forward.width * blocks * kLanes)) : nullptr;
  if (blocks > 0 && a.forward.positions) conv_backward_blocks<true>(a, b, e0, blocks, scratch);
  else if (blocks > 0) conv_backward_blocks<false>(a, b, e0, blocks, scratch);
  if (e0 + blocks * kLanes < e1) reference::causal_conv1d_silu_backward_channels(a, b, e0 + blocks * kLanes, e1);
}

}  // namespace mambacpp::ops::cpu
