// AVX2 variants of the optimizer's loops (optimizer_kernels.h): plain multiplies, adds, divides and
// square roots, no FMA, in the generic loops' order, so both give the same bits. Only intrinsics
// here (see ops/cpu/kernels.cpp on why no inline library code).
#include <immintrin.h>

#include "train/optimizer_kernels.h"

// GCC fuses a multiply and an add into an FMA, even across intrinsics (its default outside ISO C
// is -ffp-contract=fast); that rounds differently from the other variant and from PyTorch.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace mambacpp::train_kernels {

void adamw_span_avx2(float* p, const float* g, float* m, float* v, int64_t n, float decay_factor,
                     const AdamWScalars& k) {
  const __m256 b1 = _mm256_set1_ps(k.beta1), b2 = _mm256_set1_ps(k.beta2);
  const __m256 c1 = _mm256_set1_ps(k.one_minus_beta1), c2 = _mm256_set1_ps(k.one_minus_beta2);
  const __m256 eps = _mm256_set1_ps(k.eps), step = _mm256_set1_ps(k.step_size);
  const __m256 bias2 = _mm256_set1_ps(k.bias2_sqrt), decay = _mm256_set1_ps(decay_factor);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_loadu_ps(g + i);
    const __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(c1, gi));
    const __m256 vi =
        _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)), _mm256_mul_ps(_mm256_mul_ps(c2, gi), gi));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bias2), eps);
    const __m256 update = _mm256_div_ps(_mm256_mul_ps(step, mi), denom);
    _mm256_storeu_ps(p + i, _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(p + i), decay), update));
  }
  for (; i < n; ++i) {
    const float mi = k.beta1 * m[i] + k.one_minus_beta1 * g[i];
    const float vi = k.beta2 * v[i] + k.one_minus_beta2 * g[i] * g[i];
    m[i] = mi;
    v[i] = vi;
    const float denom = _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(vi))) / k.bias2_sqrt + k.eps;
    p[i] = p[i] * decay_factor - k.step_size * mi / denom;
  }
}

double sum_of_squares_avx2(const float* x, int64_t n) {
  __m256d low = _mm256_setzero_pd(), high = _mm256_setzero_pd();  // lanes 0-3 and 4-7
  int64_t i = 0;
  for (; i + kSquareLanes <= n; i += kSquareLanes) {
    const __m256d a = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), b = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
    low = _mm256_add_pd(low, _mm256_mul_pd(a, a));
    high = _mm256_add_pd(high, _mm256_mul_pd(b, b));
  }
  alignas(32) double lanes[kSquareLanes];
  _mm256_store_pd(lanes, low);
  _mm256_store_pd(lanes + 4, high);
  for (int j = 0; i < n; ++i, ++j) lanes[j] += double(x[i]) * double(x[i]);
  double sum = 0;
  for (double lane : lanes) sum += lane;
  return sum;
}

}  // namespace mambacpp::train_kernels
