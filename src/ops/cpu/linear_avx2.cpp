// Skinny linear (decode) and weight widening, AVX2 + FMA + F16C.
//
// linear_columns computes y[m, o] = x[m, :] . w[o, :] for a range of output columns o. The
// weights dominate the memory traffic, so a block of kRows weight rows is read once and used
// for all M rows of x: register tiles of kRows weight rows x up to kSeqs rows of x, with one 8-wide
// accumulator each (12 of the 16 ymm registers, plus kSeqs for x and one for the weights), reduced
// horizontally once per tile. 4 x 3 measured fastest of 6x2, 5x2, 4x2, 4x3, 3x4, 2x4 on the AMD EPYC
// (81 GFLOP/s on one thread at M = 32, where OpenBLAS sgemm gives 71).
// With many rows of x, a BF16/F16 row block is first widened into an fp32 buffer that stays in
// L1, so each weight is converted once rather than once per tile.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ops/cpu/kernels.h"
#include "ops/cpu/vec_math_avx2.h"

namespace mambacpp::ops::cpu {
namespace {

constexpr int kRows = 4;  // weight rows per register tile
constexpr int kSeqs = 3;  // rows of x per register tile
// With one row of x and F32 weights (single-sequence decode) the tiles take 8 weight rows (8
// accumulators): 8 load streams keep more cache misses in flight per core. Two threads, weights
// in DRAM, the 130m decode matrices: 12% less time than 4-row tiles, decode 4-13% faster; with
// BF16 weights (software-prefetched) the bench was 5-9% slower, so they keep 4. Each dot product
// is still one accumulator over k in order: results equal the 4-row tiles' bit for bit.
constexpr int kRowsSingleRow = 8;
// Input features per pass over the rows of x (see linear_row_block): K up to kMaxWhole in one
// piece, longer K in pieces of at most kMaxPiece.
constexpr int64_t kMaxWhole = 1024, kMaxPiece = 512;
// From this many rows of x, a BF16/F16 row block is widened once into an fp32 copy in L1 rather
// than converted in every tile (one thread, weights in DRAM, BF16 in_proj: at M = 8 converting
// in the tiles is 30% faster, at 16 equal, at 32 widening first is 5% faster).
constexpr int64_t kWidenMinRows = 16;

struct F32Loader {
  using T = float;
  static __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
  static float load1(const float* p) { return *p; }
};
struct BF16Loader {
  using T = uint16_t;
  static __m256 load8(const uint16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static float load1(const uint16_t* p) {
    const uint32_t bits = uint32_t(*p) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
};
struct F16Loader {
  using T = uint16_t;
  static __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static float load1(const uint16_t* p) { return _cvtsh_ss(*p); }
};

// dots[r][s] = w[r, :len] . x[s, :len] for R rows of w (row stride K) and S rows of x (stride
// x_ld). With `prefetch`, the next R rows (the next tile's, contiguous after these) are prefetched
// at the pace these are consumed (see prefetch_next_rows).
template <class Loader, int R, int S>
inline void dot_tile(const typename Loader::T* w, int64_t K, int64_t len, const float* x, int64_t x_ld,
                     bool prefetch, float dots[R][S]) {
  constexpr int kStepBytes = R * 8 * int(sizeof(typename Loader::T));  // weight bytes one k step consumes
  const int prefetch_bytes = prefetch ? kStepBytes : 0;
  // an address, not a pointer: past the last tile it points beyond the matrix, and prefetches never fault
  const uintptr_t next = reinterpret_cast<uintptr_t>(w + R * K);
  __m256 acc[R][S];
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < S; ++s) acc[r][s] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= len; k += 8) {
    for (int line = 0; line < prefetch_bytes; line += 64)
      _mm_prefetch(reinterpret_cast<const char*>(next + uintptr_t(k / 8 * kStepBytes + line)), _MM_HINT_T0);
    __m256 xv[S];
    for (int s = 0; s < S; ++s) xv[s] = _mm256_loadu_ps(x + s * x_ld + k);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = Loader::load8(w + r * K + k);
      for (int s = 0; s < S; ++s) acc[r][s] = _mm256_fmadd_ps(wv, xv[s], acc[r][s]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < S; ++s) dots[r][s] = hsum8(acc[r][s]);
  for (; k < len; ++k)
    for (int r = 0; r < R; ++r)
      for (int s = 0; s < S; ++s) dots[r][s] += Loader::load1(w + r * K + k) * x[s * x_ld + k];
}

// Input features [k0, k0 + len) of output columns [o, o + R) of rows [m, m + S) of y: the first
// piece of K writes y (bias, accumulate), later ones add to it.
template <class Loader, int R, int S>
void linear_tile(const LinearArgs& a, const typename Loader::T* w_rows, int64_t o, int64_t m, int64_t k0,
                 int64_t len, bool prefetch) {
  float dots[R][S];
  dot_tile<Loader, R, S>(w_rows + k0, a.w.in_features, len, a.x + m * a.x_ld + k0, a.x_ld, prefetch, dots);
  for (int s = 0; s < S; ++s) {
    float* y = a.y + (m + s) * a.y_ld + o;
    for (int r = 0; r < R; ++r) {
      if (k0 > 0) {
        y[r] += dots[r][s];
        continue;
      }
      const float v = dots[r][s] + (a.bias ? a.bias[o + r] : 0.0f);
      y[r] = a.accumulate ? y[r] + v : v;
    }
  }
}

// Software prefetch of the weights, measured on one thread with weights in DRAM: BF16 rows (1.5-3
// KB) are too short for the hardware prefetcher to ramp up (10 -> 15-17 GB/s with it); F32 rows
// stream well alone when one tile reads them (prefetching cost 12%), but a block that several
// tiles reuse gets its successor's loads overlapped with their arithmetic (+20% at M = 8).
template <class Loader>
bool prefetch_next_rows(int64_t M) {
  return sizeof(typename Loader::T) == 2 || M > kSeqs;
}

// One block of R weight rows (starting at output column o) against all M rows of x, in pieces of
// K short enough that the tile's weights and rows of x stay in L1 while every row of x passes.
// One thread, out_proj F32 (K = 1536) at M = 32: 48 GFLOP/s whole, 58 in pieces of 768, 65 in
// pieces of 512; but in_proj (K = 768) at M = 8 lost 12% in two pieces of 384.
template <class Loader, int R>
void linear_row_block(const LinearArgs& a, const typename Loader::T* w_rows, int64_t o, bool prefetch) {
  const int64_t K = a.w.in_features, pieces = K <= kMaxWhole ? 1 : (K + kMaxPiece - 1) / kMaxPiece;
  const int64_t piece = ((K + pieces - 1) / pieces + 7) / 8 * 8;
  for (int64_t k0 = 0; k0 < K; k0 += piece) {
    const int64_t len = K - k0 < piece ? K - k0 : piece;
    int64_t m = 0;
    for (; m + kSeqs <= a.M; m += kSeqs) linear_tile<Loader, R, kSeqs>(a, w_rows, o, m, k0, len, prefetch);
    if (a.M - m == 2) linear_tile<Loader, R, 2>(a, w_rows, o, m, k0, len, prefetch);
    if (a.M - m == 1) linear_tile<Loader, R, 1>(a, w_rows, o, m, k0, len, prefetch);
  }
}
static_assert(kSeqs == 3, "linear_row_block finishes with tiles of 2 or 1 rows of x");

template <class Loader>
void linear_rows(const LinearArgs& a, const typename Loader::T* w_rows, int64_t o, int rows, bool prefetch) {
  switch (rows) {
    case 8: return linear_row_block<Loader, 8>(a, w_rows, o, prefetch);
    case 4: return linear_row_block<Loader, 4>(a, w_rows, o, prefetch);
    case 3: return linear_row_block<Loader, 3>(a, w_rows, o, prefetch);
    case 2: return linear_row_block<Loader, 2>(a, w_rows, o, prefetch);
    case 1: return linear_row_block<Loader, 1>(a, w_rows, o, prefetch);
    default:  // 5..7 rows (the end of a matrix): 4, then the rest
      linear_row_block<Loader, 4>(a, w_rows, o, prefetch);
      return linear_rows<Loader>(a, w_rows + 4 * a.w.in_features, o + 4, rows - 4, prefetch);
  }
}
static_assert(kRows == 4 && kRowsSingleRow == 8, "linear_rows dispatches 1..8 rows");

template <class Loader>
void widen_typed(const typename Loader::T* src, int64_t count, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) _mm256_storeu_ps(dst + i, Loader::load8(src + i));
  for (; i < count; ++i) dst[i] = Loader::load1(src + i);
}

template <class Loader>
void linear_columns_typed(const LinearArgs& a, int64_t o0, int64_t o1) {
  using T = typename Loader::T;
  const int64_t K = a.w.in_features;
  const T* w = static_cast<const T*>(a.w.data);
  constexpr bool is_half = !std::is_same_v<T, float>;
  const bool widen_first = is_half && a.M >= kWidenMinRows;
  float* wide = widen_first ? thread_scratch(size_t(kRows * K)) : nullptr;
  const int block = a.M == 1 && !is_half ? kRowsSingleRow : kRows;
  for (int64_t o = o0; o < o1; o += block) {
    const int rows = int(o1 - o < block ? o1 - o : block);
    if (widen_first) {
      widen_typed<Loader>(w + o * K, rows * K, wide);
      linear_rows<F32Loader>(a, wide, o, rows, false);  // the copy has no next rows
    } else {
      linear_rows<Loader>(a, w + o * K, o, rows, prefetch_next_rows<Loader>(a.M));
    }
  }
}

}  // namespace

void linear_columns_avx2(const LinearArgs& a, int64_t o0, int64_t o1) {
  switch (a.w.dtype) {
    case DType::F32: return linear_columns_typed<F32Loader>(a, o0, o1);
    case DType::BF16: return linear_columns_typed<BF16Loader>(a, o0, o1);
    case DType::F16: return linear_columns_typed<F16Loader>(a, o0, o1);
    default: MAMBACPP_CHECK(false && "linear weights must be F32, BF16 or F16");
  }
}

void widen_avx2(const Weight& w, int64_t first, int64_t count, float* dst) {
  switch (w.dtype) {
    case DType::F32: return widen_typed<F32Loader>(static_cast<const float*>(w.data) + first, count, dst);
    case DType::BF16: return widen_typed<BF16Loader>(static_cast<const uint16_t*>(w.data) + first, count, dst);
    case DType::F16: return widen_typed<F16Loader>(static_cast<const uint16_t*>(w.data) + first, count, dst);
    default: MAMBACPP_CHECK(false && "weights must be F32, BF16 or F16");
  }
}

}  // namespace mambacpp::ops::cpu
