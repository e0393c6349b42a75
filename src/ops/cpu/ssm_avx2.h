// What the selective scan's forward (ssm_avx2.cpp) and backward (ssm_backward_avx2.cpp) share:
// moving 8 channels' rows to and from the [N][8] layout the kernels keep states in, and one
// token's state update, so that the backward recomputes exactly the forward's states. Include
// only from *_avx2.cpp files: everything here has internal linkage (see vec_math_avx2.h).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "ops/cpu/vec_math_avx2.h"
#include "ops/ops.h"

namespace mambacpp::ops::cpu {
namespace {

constexpr int kLanes = 8;

// dst[i * dst_stride + j] = src[j * src_stride + i] for i, j < 8.
inline void transpose8x8(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4)
    for (int j = 0; j < 2; ++j) {
      r[i + j] = _mm256_shuffle_ps(t[i + j], t[i + j + 2], _MM_SHUFFLE(1, 0, 1, 0));
      r[i + j + 2] = _mm256_shuffle_ps(t[i + j], t[i + j + 2], _MM_SHUFFLE(3, 2, 3, 2));
    }
  // r[0..3] hold rows 0-3 of the result in their low/high lanes from source rows 0-3 / 4-7
  const int order[4] = {0, 2, 1, 3};
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(r[order[i]], r[order[i] + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(r[order[i]], r[order[i] + 4], 0x31));
  }
}

// dst[j * 8 + i] = src[i * stride + j] for i < 8, j < cols: 8 channels' rows to [cols][8].
inline void gather_columns(const float* src, int64_t stride, int64_t cols, float* dst) {
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) transpose8x8(src + j, stride, dst + j * kLanes, kLanes);
  for (int i = 0; i < kLanes; ++i)
    for (int64_t c = j; c < cols; ++c) dst[c * kLanes + i] = src[i * stride + c];
}

inline void scatter_columns(const float* src, int64_t cols, float* dst, int64_t stride) {
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) transpose8x8(src + j * kLanes, kLanes, dst + j, stride);
  for (int i = 0; i < kLanes; ++i)
    for (int64_t c = j; c < cols; ++c) dst[i * stride + c] = src[c * kLanes + i];
}

// The states of `blocks` 8-channel blocks, [block][N][8], to or from [8 * blocks][N] rows (the
// layout of ScanArgs::state and of the checkpoints).
inline void gather_states(const float* rows, int64_t N, int64_t blocks, float* h) {
  for (int64_t k = 0; k < blocks; ++k) gather_columns(rows + k * kLanes * N, N, N, h + k * N * kLanes);
}
inline void scatter_states(const float* h, int64_t N, int64_t blocks, float* rows) {
  for (int64_t k = 0; k < blocks; ++k) scatter_columns(h + k * N * kLanes, N, rows + k * kLanes * N, N);
}

// The discretised input of one 8-channel block at one token: dt, dt x and D x.
struct ScanToken {
  __m256 dt, dt_x, y;
};

inline __m256 scan_dt_input8(const ScanArgs& a, int64_t row, int64_t e) {
  const __m256 dt_in = _mm256_loadu_ps(a.dt + row * a.dt_ld + e);
  return a.dt_bias ? _mm256_add_ps(dt_in, _mm256_loadu_ps(a.dt_bias + e)) : dt_in;
}

inline ScanToken scan_token_start(const ScanArgs& a, int64_t row, int64_t e) {
  const __m256 x = _mm256_loadu_ps(a.x + row * a.x_ld + e);
  const __m256 dt = softplus8(scan_dt_input8(a, row, e));
  return {dt, _mm256_mul_ps(dt, x), a.D ? _mm256_mul_ps(_mm256_loadu_ps(a.D + e), x) : _mm256_setzero_ps()};
}

// exp(dt A) of one block at one state index.
inline __m256 scan_decay(const ScanToken& s, const float* A) {
  return exp8_nonpositive(_mm256_mul_ps(s.dt, _mm256_load_ps(A)));
}

// One state update of one block at one state index: h_out = decay h_in + dt x B (h_out may be
// h_in); returns the new state.
inline __m256 scan_state_update(const ScanToken& s, __m256 decay, const float* h_in, float* h_out, __m256 B) {
  const __m256 hn = _mm256_fmadd_ps(decay, _mm256_load_ps(h_in), _mm256_mul_ps(s.dt_x, B));
  _mm256_store_ps(h_out, hn);
  return hn;
}

}  // namespace
}  // namespace mambacpp::ops::cpu
