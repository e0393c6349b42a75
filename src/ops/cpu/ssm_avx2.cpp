// Causal conv + SiLU and the selective scan, AVX2 + FMA: 8 channels per register, so every load
// and store of x, dt, z, y is one contiguous vector of a token's row, the state of 8 channels is
// updated together, and no horizontal sums are needed. Both walk the tokens in the outer loop
// and a group of 8-channel blocks in the inner one: a token's rows lie kilobytes apart, so
// walking one block through all tokens would touch a new page at every load. Per group the state
// and per-channel parameters (A, conv weights) are transposed once into a scratch that stays in
// L1, and the state is written back at the end. Channels left over from a multiple of 8 go
// through the reference.
#include <immintrin.h>

#include "ops/cpu/kernels.h"
#include "ops/cpu/ssm_avx2.h"
#include "ops/cpu/vec_math_avx2.h"
#include "ops/reference.h"

namespace mambacpp::ops::cpu {
namespace {

inline void scan_token_finish(const ScanArgs& a, int64_t row, int64_t e, __m256 y) {
  if (a.z) y = _mm256_mul_ps(y, silu8(_mm256_loadu_ps(a.z + row * a.z_ld + e)));
  _mm256_storeu_ps(a.y + row * a.y_ld + e, y);
}

// One state update of one block: h = exp(dt A) h + dt x B; returns y + h C.
inline __m256 scan_state_step(const ScanToken& s, const float* A, float* h, __m256 B, __m256 C, __m256 y) {
  return _mm256_fmadd_ps(scan_state_update(s, scan_decay(s, A), h, h, B), C, y);
}

// G blocks of one token together (G independent chains of exp per state index n).
template <int G>
inline void scan_token_blocks(const ScanArgs& a, int64_t row, int64_t e, const float* A, float* h) {
  const int64_t N = a.d_state, block_floats = N * kLanes;
  const float* Bm = a.Bm + row * a.bc_ld;
  const float* Cm = a.Cm + row * a.bc_ld;
  ScanToken s[G];
  __m256 y[G];
  for (int g = 0; g < G; ++g) s[g] = scan_token_start(a, row, e + g * kLanes), y[g] = s[g].y;
  for (int64_t n = 0; n < N; ++n) {
    const __m256 B = _mm256_broadcast_ss(Bm + n), C = _mm256_broadcast_ss(Cm + n);
    for (int g = 0; g < G; ++g)
      y[g] = scan_state_step(s[g], A + g * block_floats + n * kLanes, h + g * block_floats + n * kLanes, B, C, y[g]);
  }
  for (int g = 0; g < G; ++g) scan_token_finish(a, row, e + g * kLanes, y[g]);
}

// Channels [e0, e0 + 8 * blocks) of sequence b, token by token: each token's row is read once
// for all the blocks, kInterleave blocks at a time. scratch: 2 * blocks * N * 8 floats, the
// blocks' state and A, laid out [block][N][8]. With checkpoints the state is also saved before
// every checkpoint_every-th token.
// kPositions: whether a.positions is set (a template argument, so the path without packed documents
// has no test for restarts in its token loop).
constexpr int kInterleave = 2;  // 1: 0.87, 2: 0.79, 3: 0.84, 4: 0.79 ns per element, one thread
template <bool kPositions>
[[gnu::noinline]] void scan_blocks(const ScanArgs& a, int b, int64_t e0, int64_t blocks, float* scratch) {
  const int64_t N = a.d_state, L = a.length, E = a.d_inner, block_floats = N * kLanes;
  float* h = scratch;
  float* A = scratch + blocks * block_floats;
  float* state = a.state + (int64_t(b) * E + e0) * N;
  gather_states(state, N, blocks, h);
  gather_states(a.A + e0 * N, N, blocks, A);
  // Tokens between saved states; without checkpoints one span of all tokens, so the test for
  // saving stays out of the token loop.
  const int64_t span = a.checkpoints ? a.checkpoint_every : L;
  for (int64_t t0 = 0; t0 < L; t0 += span) {
    if (a.checkpoints) scatter_states(h, N, blocks, reference::scan_checkpoint(a, b, t0 / span) + e0 * N);
    const int64_t t1 = t0 + span < L ? t0 + span : L;  // not std::min: see kernels.cpp's note
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row = b * L + t;
      if (kPositions && a.positions[row] == 0)  // a new document starts from the zero state
        for (int64_t i = 0; i < blocks * block_floats; i += kLanes) _mm256_store_ps(h + i, _mm256_setzero_ps());
      int64_t k = 0;
      for (; k + kInterleave <= blocks; k += kInterleave)
        scan_token_blocks<kInterleave>(a, row, e0 + k * kLanes, A + k * block_floats, h + k * block_floats);
      for (; k < blocks; ++k) scan_token_blocks<1>(a, row, e0 + k * kLanes, A + k * block_floats, h + k * block_floats);
    }
  }
  scatter_states(h, N, blocks, state);
}

// Channels [e0, e0 + 8 * blocks) of sequence b, token by token as scan_blocks. The weights
// and the saved inputs are laid out [k][block][8], so block j of any source row is 8 j floats on.
// scratch: (2W - 1) * blocks * 8 floats. kPositions: whether a.positions is set. Not inlined: with
// both instantiations inlined into conv_channels_avx2 the path without positions ran 10-20% slower
// (bench/ops_bench conv/B:1/L:512, one thread); as functions of their own they run as before.
template <bool kPositions>
[[gnu::noinline]] void conv_blocks(const ConvArgs& a, int b, int64_t e0, int64_t blocks, float* scratch) {
  const int W = a.width;
  const int64_t L = a.length, row_floats = blocks * kLanes;
  float* w = scratch;                   // [W][blocks][8]
  float* old = scratch + W * row_floats;  // [W-1][blocks][8]: the state, oldest first
  float* state = a.state + (int64_t(b) * a.channels + e0) * (W - 1);
  for (int64_t c = 0; c < row_floats; ++c)
    for (int k = 0; k < W; ++k) {
      w[k * row_floats + c] = a.weight[(e0 + c) * W + k];
      if (k < W - 1) old[k * row_floats + c] = state[c * (W - 1) + k];
    }
  // The inputs of the blocks at position p of this chunk; p < 0 reaches into the saved state.
  auto inputs = [&](int64_t p) { return p < 0 ? old + (W - 1 + p) * row_floats : a.x + (b * L + p) * a.x_ld + e0; };
  for (int64_t t = 0; t < L; ++t) {
    float* out = a.out + (b * L + t) * a.out_ld + e0;
    const int first = kPositions ? reference::conv_first_tap(a.positions[b * L + t], W) : 0;
    for (int64_t c = 0; c < row_floats; c += kLanes) {
      __m256 acc = a.bias ? _mm256_loadu_ps(a.bias + e0 + c) : _mm256_setzero_ps();
      for (int k = first; k < W; ++k)
        acc = _mm256_fmadd_ps(_mm256_load_ps(w + k * row_floats + c), _mm256_loadu_ps(inputs(t - (W - 1) + k) + c), acc);
      _mm256_storeu_ps(out + c, silu8(acc));
    }
  }
  // The new state: the last W-1 inputs (old state entries first where the chunk is shorter), zero
  // before the last document's start.
  const int kept = kPositions ? reference::conv_first_kept_state(a, b) : 0;
  for (int k = 0; k < W - 1; ++k) {
    const float* in = inputs(L - (W - 1) + k);
    for (int64_t c = 0; c < row_floats; ++c) state[c * (W - 1) + k] = k < kept ? 0.0f : in[c];
  }
}

}  // namespace

void scan_channels_avx2(const ScanArgs& a, int b, int64_t e0, int64_t e1) {
  MAMBACPP_CHECK(!a.checkpoints || a.checkpoint_every > 0);
  const int64_t blocks = (e1 - e0) / kLanes;
  float* scratch = blocks > 0 ? thread_scratch(size_t(2 * blocks * a.d_state * kLanes)) : nullptr;
  if (blocks > 0 && a.positions) scan_blocks<true>(a, b, e0, blocks, scratch);
  else if (blocks > 0) scan_blocks<false>(a, b, e0, blocks, scratch);
  if (e0 + blocks * kLanes < e1) reference::selective_scan_channels(a, b, e0 + blocks * kLanes, e1);
}

void conv_channels_avx2(const ConvArgs& a, int b, int64_t e0, int64_t e1) {
  const int64_t blocks = (e1 - e0) / kLanes;
  float* scratch = blocks > 0 ? thread_scratch(size_t((2 * a.width - 1) * blocks * kLanes)) : nullptr;
  if (blocks > 0 && a.positions) conv_blocks<true>(a, b, e0, blocks, scratch);
  else if (blocks > 0) conv_blocks<false>(a, b, e0, blocks, scratch);
  if (e0 + blocks * kLanes < e1) reference::causal_conv1d_silu_channels(a, b, e0 + blocks * kLanes, e1);
}

}  // namespace mambacpp::ops::cpu
