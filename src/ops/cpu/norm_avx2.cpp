// rmsnorm of one row, AVX2 + FMA: four 8-wide partial sums of squares, then one scaling pass.
#include <immintrin.h>

#include "ops/cpu/kernels.h"
#include "ops/cpu/vec_math_avx2.h"

namespace mambacpp::ops::cpu {

void rmsnorm_row_avx2(const float* x, int64_t D, const float* weight, float eps, float* y) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t d = 0;
  for (; d + 32 <= D; d += 32)
    for (int j = 0; j < 4; ++j) {
      const __m256 v = _mm256_loadu_ps(x + d + 8 * j);
      acc[j] = _mm256_fmadd_ps(v, v, acc[j]);
    }
  for (; d + 8 <= D; d += 8) {
    const __m256 v = _mm256_loadu_ps(x + d);
    acc[0] = _mm256_fmadd_ps(v, v, acc[0]);
  }
  float sum_sq = hsum8(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; d < D; ++d) sum_sq += x[d] * x[d];
  const float inv = 1.0f / _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(sum_sq / float(D) + eps)));
  const __m256 scale = _mm256_set1_ps(inv);
  d = 0;
  for (; d + 8 <= D; d += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + d), scale);
    if (weight) v = _mm256_mul_ps(v, _mm256_loadu_ps(weight + d));
    _mm256_storeu_ps(y + d, v);
  }
  for (; d < D; ++d) y[d] = x[d] * inv * (weight ? weight[d] : 1.0f);
}

}  // namespace mambacpp::ops::cpu
