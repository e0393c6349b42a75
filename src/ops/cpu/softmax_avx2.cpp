// The softmax numerators of one row of logits, AVX2: an 8-lane max, then exp(x - max) in place
// with the sum of the exps kept in two 4-lane double accumulators (so it is independent of how the
// row is split among threads and as accurate as a double loop). The last n % 8 elements go through
// masked loads and stores.
#include <immintrin.h>

#include "ops/cpu/kernels.h"
#include "ops/cpu/vec_math_avx2.h"

namespace mambacpp::ops::cpu {
namespace {

inline float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline __m256d add_widened(__m256d sum, __m128 four) { return _mm256_add_pd(sum, _mm256_cvtps_pd(four)); }

}  // namespace

SoftmaxNumerators softmax_numerators_avx2(float* x, int64_t n) {
  const int64_t full = n / 8 * 8;
  const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n - full)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256 minus_inf = _mm256_set1_ps(-__builtin_inff());
  __m256 max8 = minus_inf, nan8 = _mm256_setzero_ps();  // nan8: lanes that saw a NaN
  auto take = [&](__m256 v) {
    max8 = _mm256_max_ps(max8, v);
    nan8 = _mm256_or_ps(nan8, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  };
  for (int64_t i = 0; i < full; i += 8) take(_mm256_loadu_ps(x + i));
  if (full < n) take(_mm256_blendv_ps(minus_inf, _mm256_maskload_ps(x + full, tail), _mm256_castsi256_ps(tail)));
  const float max = hmax8(max8);
  // exp8 clamps its argument, so NaN and infinities would vanish there: report them as a NaN sum.
  if (_mm256_movemask_ps(nan8) || !(max - max == 0.0f)) return {max, __builtin_nan("")};
  const __m256 shift = _mm256_set1_ps(max);
  __m256d sum_lo = _mm256_setzero_pd(), sum_hi = _mm256_setzero_pd();
  auto add = [&](__m256 e) {
    sum_lo = add_widened(sum_lo, _mm256_castps256_ps128(e));
    sum_hi = add_widened(sum_hi, _mm256_extractf128_ps(e, 1));
  };
  for (int64_t i = 0; i < full; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), shift));
    _mm256_storeu_ps(x + i, e);
    add(e);
  }
  if (full < n) {
    const __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_maskload_ps(x + full, tail), shift)),
                                   _mm256_castsi256_ps(tail));
    _mm256_maskstore_ps(x + full, tail, e);
    add(e);
  }
  const __m256d s = _mm256_add_pd(sum_lo, sum_hi);
  const __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
  return {max, _mm_cvtsd_f64(_mm_add_sd(s2, _mm_unpackhi_pd(s2, s2)))};
}

}  // namespace mambacpp::ops::cpu
