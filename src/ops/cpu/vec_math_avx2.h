// fp32 exp, log, softplus and SiLU on 8 lanes (AVX2 + FMA). Include only from *_avx2.cpp files:
// everything here has internal linkage, so no AVX code can stand in for a generic inline copy.
//
// exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then Cephes' minimax polynomial
// (expf.c); within 2 ulp of the correctly rounded result on [-87.3, 88.3]. Inputs are clamped to
// that range: below it the result is 2^-126 instead of a subnormal or 0 (an absolute error under
// 1.2e-38), above it 2.4e38 instead of inf.
// log: Cephes' logf.c, within 2 ulp on positive normal inputs.
#pragma once

#include <immintrin.h>

namespace mambacpp::ops::cpu {
namespace {

// exp of x already within [-87.33654, 88.37626] (so that 2^n below is a normal float).
inline __m256 exp8_in_range(__m256 x) {
  // n = round(x / ln2), by adding 1.5 * 2^23 + 127: the sum's low mantissa bits are n + 127,
  // the exponent field of 2^n once shifted into place.
  const __m256 magic = _mm256_set1_ps(12583039.0f);
  const __m256 shifted = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
  const __m256 n = _mm256_sub_ps(shifted, magic);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // x - n ln2, ln2 in two parts
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  // exp(r) = 1 + r + r^2 P(r), P of degree 5 evaluated in Estrin's scheme (a short dependency chain)
  const __m256 r2 = _mm256_mul_ps(r, r), r4 = _mm256_mul_ps(r2, r2);
  const __m256 p01 = _mm256_fmadd_ps(_mm256_set1_ps(1.6666665459e-1f), r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 p23 = _mm256_fmadd_ps(_mm256_set1_ps(8.3334519073e-3f), r, _mm256_set1_ps(4.1665795894e-2f));
  const __m256 p45 = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r, _mm256_set1_ps(1.3981999507e-3f));
  const __m256 p = _mm256_fmadd_ps(r4, p45, _mm256_fmadd_ps(r2, p23, p01));
  const __m256 e = _mm256_fmadd_ps(r2, p, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  return _mm256_mul_ps(e, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(shifted), 23)));
}

inline __m256 exp8(__m256 x) {
  return exp8_in_range(_mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.37626f)));
}

// exp of x <= 0 (the scan's decays dt * A): only the lower clamp is needed.
inline __m256 exp8_nonpositive(__m256 x) { return exp8_in_range(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f))); }

// Natural log of positive normal x.
inline __m256 log8(__m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126)));
  // mantissa m in [0.5, 1); fold to [sqrt(1/2), sqrt(2)) so the polynomial sees |m - 1| < 0.42
  __m256 m = _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f000000)));
  const __m256 small = _mm256_cmp_ps(m, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
  e = _mm256_sub_ps(e, _mm256_and_ps(small, _mm256_set1_ps(1.0f)));
  m = _mm256_sub_ps(_mm256_add_ps(m, _mm256_and_ps(small, m)), _mm256_set1_ps(1.0f));
  const __m256 z = _mm256_mul_ps(m, m);
  __m256 p = _mm256_set1_ps(7.0376836292e-2f);
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(-1.1514610310e-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(1.1676998740e-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(-1.2420140846e-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(1.4249322787e-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(-1.6668057665e-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(2.0000714765e-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(-2.4999993993e-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(3.3333331174e-1f));
  p = _mm256_mul_ps(_mm256_mul_ps(p, m), z);                     // m^3 P(m)
  p = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), p);    // + e ln2 (low part)
  p = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), p);              // - m^2 / 2
  return _mm256_add_ps(_mm256_add_ps(m, p), _mm256_mul_ps(e, _mm256_set1_ps(0.693359375f)));
}

// log(1 + u) for u >= 0, accurate also where 1 + u rounds to 1: with w = fl(1 + u),
// log1p(u) = log(w) * u / (w - 1) (Goldberg's correction), and u itself when w == 1.
inline __m256 log1p8(__m256 u) {
  const __m256 w = _mm256_add_ps(u, _mm256_set1_ps(1.0f));
  const __m256 wm1 = _mm256_sub_ps(w, _mm256_set1_ps(1.0f));
  const __m256 exact = _mm256_cmp_ps(wm1, _mm256_setzero_ps(), _CMP_EQ_OQ);
  const __m256 corrected = _mm256_mul_ps(log8(w), _mm256_div_ps(u, _mm256_blendv_ps(wm1, _mm256_set1_ps(1.0f), exact)));
  return _mm256_blendv_ps(corrected, u, exact);
}

// As torch's softplus (threshold 20): x > 20 ? x : log1p(exp(x)).
inline __m256 softplus8(__m256 x) {
  const __m256 sp = log1p8(exp8(_mm256_min_ps(x, _mm256_set1_ps(20.0f))));
  return _mm256_blendv_ps(sp, x, _mm256_cmp_ps(x, _mm256_set1_ps(20.0f), _CMP_GT_OQ));
}

inline __m256 silu8(__m256 x) {
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace
}  // namespace mambacpp::ops::cpu
