// The selective scan's backward, AVX2 + FMA, 8 channels per register as the forward
// (ssm_avx2.cpp), tokens in the outer loop and the task's 8-channel blocks in the inner one. Per
// task (one sequence, up to 64 channels) the chunks between saved states are walked from the
// last: the chunk's states are recomputed from its checkpoint with the forward's own operations
// (ssm_avx2.h, so they are the forward's states bit for bit) into a scratch
// [token][block][N][8], then the reverse scan runs over the chunk carrying dL/dh [block][N][8].
// dB and dC of a token are sums over channels: kept per lane while the blocks go by, then summed
// across lanes once per token. The decays exp(dt A) of the recomputation are kept beside the states
// for the reverse: recomputing them there instead was slower (1.92 against 1.48-1.64 ns per
// element, one thread, E 1024, N 16, 64-token chunks), though the scratch doubles (528 KiB per
// task of 64 channels).
#include <immintrin.h>

#include "ops/cpu/kernels.h"
#include "ops/cpu/ssm_avx2.h"
#include "ops/cpu/vec_math_avx2.h"
#include "ops/reference.h"

namespace mambacpp::ops::cpu {
namespace {

inline __m256 sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

// Lane j of the result is the sum of the 8 lanes of vector j of v (8 vectors, one after another).
inline __m256 lane_sums8(const float* v) {
  __m256 pairs[4];
  for (int i = 0; i < 4; ++i)  // [v0 01, v0 23, v1 01, v1 23 | v0 45, v0 67, v1 45, v1 67] for i = 0
    pairs[i] = _mm256_hadd_ps(_mm256_load_ps(v + 16 * i), _mm256_load_ps(v + 16 * i + 8));
  const __m256 low = _mm256_hadd_ps(pairs[0], pairs[1]);  // [v0..v3 lanes 0-3 | v0..v3 lanes 4-7]
  const __m256 high = _mm256_hadd_ps(pairs[2], pairs[3]);  // the same for v4..v7
  return _mm256_add_ps(_mm256_permute2f128_ps(low, high, 0x20), _mm256_permute2f128_ps(low, high, 0x31));
}

// One task's scratch, in floats; every part is a whole number of vectors.
struct BackwardScratch {
  int64_t blocks, N;
  float* A;       // [blocks][N][8]
  float* dh;      // [blocks][N][8] dL/d(state after the token being processed)
  float* dA;      // [blocks][N][8] dL/dA, summed over tokens
  float* sums;    // [blocks][2][8] dL/dD and dL/d(dt_bias), summed over tokens
  float* dbc;     // [2N][8] the current token's dB then dC, per lane
  float* zeros;   // [N][8] the state before a document's first token
  float* dt;      // [span][blocks][8] the chunk's dt
  float* states;  // [span + 1][blocks][N][8] the chunk's states, the one before its first token first
  float* decays;  // [span][blocks][N][8] the chunk's exp(dt A)

  BackwardScratch(int64_t blocks_, int64_t N_, int64_t span) : blocks(blocks_), N(N_) {
    const int64_t block_floats = N * kLanes;
    A = thread_scratch(size_t(3 * blocks * block_floats + 2 * blocks * kLanes + 3 * block_floats +
                              span * blocks * kLanes + (2 * span + 1) * blocks * block_floats));
    dh = A + blocks * block_floats;
    dA = dh + blocks * block_floats;
    sums = dA + blocks * block_floats;
    dbc = sums + 2 * blocks * kLanes;
    zeros = dbc + 2 * block_floats;
    dt = zeros + block_floats;
    states = dt + span * blocks * kLanes;
    decays = states + (span + 1) * blocks * block_floats;
  }
  float* state(int64_t slot, int64_t block) const { return states + (slot * blocks + block) * N * kLanes; }
  float* decay(int64_t slot, int64_t block) const { return decays + (slot * blocks + block) * N * kLanes; }
};

// The states after tokens t0 .. t1 - 1 into slots 1 .. t1 - t0 from the one in slot 0, with
// their dt and decays. A document's first token starts from zeros, as in the forward. kPositions:
// whether a.positions is set (a template argument here and below, so the path without packed
// documents tests for no restarts).
template <bool kPositions>
void recompute_chunk(const ScanArgs& a, int b, int64_t e0, int64_t t0, int64_t t1, const BackwardScratch& s) {
  const int64_t N = a.d_state;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t row = b * a.length + t, slot = t - t0;
    const float* Bm = a.Bm + row * a.bc_ld;
    const bool restart = kPositions && a.positions[row] == 0;
    for (int64_t k = 0; k < s.blocks; ++k) {
      const ScanToken token = scan_token_start(a, row, e0 + k * kLanes);
      _mm256_store_ps(s.dt + (slot * s.blocks + k) * kLanes, token.dt);
      const float* A = s.A + k * N * kLanes;
      const float* h_in = restart ? s.zeros : s.state(slot, k);
      float* h_out = s.state(slot + 1, k);
      float* decay = s.decay(slot, k);
      for (int64_t i = 0; i < N * kLanes; i += kLanes) {
        const __m256 d = scan_decay(token, A + i);
        _mm256_store_ps(decay + i, d);
        scan_state_update(token, d, h_in + i, h_out + i, _mm256_broadcast_ss(Bm + i / kLanes));
      }
    }
  }
}

// The reverse step of token t (chunk slot `slot`) for block k: per state index n, dh += dy_raw C
// (now dL/dh_t), the sums over n that dx, ddt and dz need, the block's dA and the token's per-lane
// dB and dC; then dh *= exp(dt A) (dL/dh_{t-1} through h_t; zero at a document's start). Writes dx, ddt and dz, adds to the
// block's dD and ddt_bias sums. (Interleaving two blocks, as the forward does, was slower here: 1.86
// against 1.48 ns per element, one thread, the registers no longer suffice.)
void reverse_token_block(const ScanBackwardArgs& g, int64_t row, int64_t e, int64_t slot, int64_t k,
                         bool restart, const BackwardScratch& s) {
  const ScanArgs& a = g.forward;
  const int64_t N = a.d_state, block_floats = N * kLanes;
  const float* Bm = a.Bm + row * a.bc_ld;
  const float* Cm = a.Cm + row * a.bc_ld;
  const float* A = s.A + k * block_floats;
  const float* h = s.state(slot + 1, k);   // h_t
  const float* h_prev = restart ? s.zeros : s.state(slot, k);  // h_{t-1} as the update read it
  const float* decay = s.decay(slot, k);
  float* dh = s.dh + k * block_floats;
  float* dA = s.dA + k * block_floats;
  const __m256 x = _mm256_loadu_ps(a.x + row * a.x_ld + e), dy = _mm256_loadu_ps(g.dy + row * g.dy_ld + e);
  const __m256 dt = _mm256_load_ps(s.dt + (slot * s.blocks + k) * kLanes), dt_x = _mm256_mul_ps(dt, x);
  const __m256 D = a.D ? _mm256_loadu_ps(a.D + e) : _mm256_setzero_ps();
  __m256 z = _mm256_setzero_ps(), gate = z, dy_raw = dy;  // dy_raw: dL/d(output before the gate)
  if (a.z) {
    z = _mm256_loadu_ps(a.z + row * a.z_ld + e), gate = sigmoid8(z);
    dy_raw = _mm256_mul_ps(dy, _mm256_mul_ps(z, gate));
  }
  __m256 y_raw = _mm256_setzero_ps(), dh_dot_B = y_raw, dh_dot_Aq = y_raw;  // sum_n h C, dh B, A q
  for (int64_t i = 0; i < block_floats; i += kLanes) {
    const __m256 B = _mm256_broadcast_ss(Bm + i / kLanes), C = _mm256_broadcast_ss(Cm + i / kLanes);
    const __m256 hn = _mm256_load_ps(h + i);
    y_raw = _mm256_fmadd_ps(hn, C, y_raw);
    const __m256 dhn = _mm256_fmadd_ps(dy_raw, C, _mm256_load_ps(dh + i));
    _mm256_store_ps(s.dbc + i, _mm256_fmadd_ps(dhn, dt_x, _mm256_load_ps(s.dbc + i)));
    _mm256_store_ps(s.dbc + block_floats + i, _mm256_fmadd_ps(dy_raw, hn, _mm256_load_ps(s.dbc + block_floats + i)));
    dh_dot_B = _mm256_fmadd_ps(dhn, B, dh_dot_B);
    const __m256 dh_decay = _mm256_mul_ps(dhn, _mm256_load_ps(decay + i));
    const __m256 q = _mm256_mul_ps(dh_decay, _mm256_load_ps(h_prev + i));  // dh exp(dt A) h_{t-1}
    _mm256_store_ps(dA + i, _mm256_fmadd_ps(dt, q, _mm256_load_ps(dA + i)));
    dh_dot_Aq = _mm256_fmadd_ps(_mm256_load_ps(A + i), q, dh_dot_Aq);
    _mm256_store_ps(dh + i, dh_decay);
  }
  if (restart)  // h_{t-1} did not reach h_t
    for (int64_t i = 0; i < block_floats; i += kLanes) _mm256_store_ps(dh + i, _mm256_setzero_ps());
  _mm256_storeu_ps(g.dx + row * g.dx_ld + e, _mm256_fmadd_ps(dt, dh_dot_B, _mm256_mul_ps(dy_raw, D)));
  const __m256 d_dt = _mm256_fmadd_ps(x, dh_dot_B, dh_dot_Aq);
  const __m256 d_dt_in = _mm256_mul_ps(d_dt, sigmoid8(scan_dt_input8(a, row, e)));  // softplus' = sigmoid
  _mm256_storeu_ps(g.ddt + row * g.ddt_ld + e, d_dt_in);
  float* sums = s.sums + 2 * k * kLanes;
  _mm256_store_ps(sums, _mm256_fmadd_ps(dy_raw, x, _mm256_load_ps(sums)));
  _mm256_store_ps(sums + kLanes, _mm256_add_ps(_mm256_load_ps(sums + kLanes), d_dt_in));
  if (a.z) {  // dz = dy y_raw silu'(z), silu'(z) = s (1 + z (1 - s))
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 silu_grad = _mm256_mul_ps(gate, _mm256_fmadd_ps(z, _mm256_sub_ps(one, gate), one));
    y_raw = _mm256_fmadd_ps(D, x, y_raw);
    _mm256_storeu_ps(g.dz + row * g.dz_ld + e, _mm256_mul_ps(_mm256_mul_ps(dy, y_raw), silu_grad));
  }
}

// Token t of all blocks, then its dB and dC summed over lanes and added to dbc_row [2N].
template <bool kPositions>
void reverse_token(const ScanBackwardArgs& g, int b, int64_t e0, int64_t t, int64_t slot, const BackwardScratch& s,
                   float* dbc_row) {
  const int64_t N2 = 2 * g.forward.d_state, row = b * g.forward.length + t;
  for (int64_t i = 0; i < N2 * kLanes; i += kLanes) _mm256_store_ps(s.dbc + i, _mm256_setzero_ps());
  const bool restart = kPositions && g.forward.positions[row] == 0;
  for (int64_t k = 0; k < s.blocks; ++k) reverse_token_block(g, row, e0 + k * kLanes, slot, k, restart, s);
  int64_t j = 0;
  for (; j + kLanes <= N2; j += kLanes)
    _mm256_storeu_ps(dbc_row + j, _mm256_add_ps(_mm256_loadu_ps(dbc_row + j), lane_sums8(s.dbc + j * kLanes)));
  for (; j < N2; ++j) dbc_row[j] += hsum8(_mm256_load_ps(s.dbc + j * kLanes));
}

// Channels [e0, e0 + 8 * blocks) of sequence b (reference.h's selective_scan_backward_channels).
template <bool kPositions>
[[gnu::noinline]] void scan_backward_blocks(const ScanBackwardArgs& g, int b, int64_t e0, int64_t blocks, float* dbc, float* dparams) {
  const ScanArgs& a = g.forward;
  const int64_t N = a.d_state, L = a.length, E = a.d_inner, every = a.checkpoint_every;
  const BackwardScratch s(blocks, N, every < L ? every : L);
  gather_states(a.A + e0 * N, N, blocks, s.A);
  for (float* p = s.dh; p < s.dbc; p += kLanes) _mm256_store_ps(p, _mm256_setzero_ps());  // dh, dA, sums
  for (float* p = s.zeros; p < s.dt; p += kLanes) _mm256_store_ps(p, _mm256_setzero_ps());
  if (g.dstate_final) gather_states(g.dstate_final + (int64_t(b) * E + e0) * N, N, blocks, s.dh);
  for (int64_t t0 = (L - 1) / every * every; t0 >= 0; t0 -= every) {
    const int64_t t1 = t0 + every < L ? t0 + every : L;
    gather_states(reference::scan_checkpoint(a, b, t0 / every) + e0 * N, N, blocks, s.state(0, 0));
    recompute_chunk<kPositions>(a, b, e0, t0, t1, s);
    for (int64_t t = t1 - 1; t >= t0; --t) reverse_token<kPositions>(g, b, e0, t, t - t0, s, dbc + t * 2 * N);
  }
  if (g.dstate) scatter_states(s.dh, N, blocks, g.dstate + (int64_t(b) * E + e0) * N);  // dL/dh_{-1}
  for (int64_t i = 0; i < blocks * N * kLanes; i += kLanes)  // dA_log = dA * A
    _mm256_store_ps(s.dA + i, _mm256_mul_ps(_mm256_load_ps(s.dA + i), _mm256_load_ps(s.A + i)));
  scatter_states(s.dA, N, blocks, dparams + e0 * N);
  for (int64_t k = 0; k < blocks; ++k) {
    _mm256_storeu_ps(dparams + E * N + e0 + k * kLanes, _mm256_load_ps(s.sums + 2 * k * kLanes));
    _mm256_storeu_ps(dparams + E * N + E + e0 + k * kLanes, _mm256_load_ps(s.sums + (2 * k + 1) * kLanes));
  }
}

}  // namespace

void scan_backward_channels_avx2(const ScanBackwardArgs& g, int b, int64_t e0, int64_t e1, float* dbc,
                                 float* dparams) {
  MAMBACPP_CHECK(g.forward.checkpoints && g.forward.checkpoint_every > 0);
  const int64_t blocks = (e1 - e0) / kLanes;
  if (blocks > 0 && g.forward.length > 0 && g.forward.positions) scan_backward_blocks<true>(g, b, e0, blocks, dbc, dparams);
  else if (blocks > 0 && g.forward.length > 0) scan_backward_blocks<false>(g, b, e0, blocks, dbc, dparams);
  if (e0 + blocks * kLanes < e1)
    reference::selective_scan_backward_channels(g, b, e0 + blocks * kLanes, e1, dbc, dparams);
}

}  // namespace mambacpp::ops::cpu
