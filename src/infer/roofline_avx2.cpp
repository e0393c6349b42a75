// The read-bandwidth kernel with 256-bit loads (compiled with -mavx2; called only when
// cpu_features() reports AVX2). Narrower loads leave about a fifth of the bandwidth unused on
// 2-core AMD EPYC machines, which would understate the roofline.
#include <immintrin.h>

#include <cstdint>

namespace mambacpp {

uint64_t sum_words_avx2(const uint64_t* words, int64_t n) {
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;  // independent chains
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a = _mm256_add_epi64(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + i)));
    b = _mm256_add_epi64(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + i + 4)));
    c = _mm256_add_epi64(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + i + 8)));
    d = _mm256_add_epi64(d, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + i + 12)));
  }
  const __m256i s = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s);
  uint64_t total = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; i < n; ++i) total += words[i];
  return total;
}

}  // namespace mambacpp
