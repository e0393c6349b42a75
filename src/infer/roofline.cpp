#include "infer/roofline.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <vector>

#include "core/cpu_features.h"
#include "core/error.h"

namespace mambacpp {

uint64_t sum_words_avx2(const uint64_t* words, int64_t n);  // roofline_avx2.cpp

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

uint64_t sum_words(const uint64_t* words, int64_t n) {
  uint64_t total = 0;
  for (int64_t i = 0; i < n; ++i) total += words[i];
  return total;
}

// Sums every word of `words`, each thread one contiguous share, with the widest loads we have.
uint64_t parallel_sum(const uint64_t* words, int64_t n) {
  const auto sum = cpu_features().avx2 ? sum_words_avx2 : sum_words;
  uint64_t total = 0;
#pragma omp parallel reduction(+ : total)
  {
    const int64_t parts = omp_get_num_threads(), part = omp_get_thread_num();
    const int64_t begin = n * part / parts, end = n * (part + 1) / parts;
    total += sum(words + begin, end - begin);
  }
  return total;
}

}  // namespace

BandwidthResult measure_read_bandwidth(size_t bytes, int repetitions) {
  MAMBACPP_CHECK(bytes >= 4096 && repetitions >= 1);
  const int64_t n = int64_t(bytes / sizeof(uint64_t));
  std::unique_ptr<uint64_t[]> words(new uint64_t[size_t(n)]);
  // Written by the threads that will read it (first touch), with values the sum depends on.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) words[i] = uint64_t(i);

  const uint64_t expected = parallel_sum(words.get(), n);  // warm-up pass
  BandwidthResult result{0, size_t(n) * sizeof(uint64_t), repetitions};
  for (int r = 0; r < repetitions; ++r) {
    const auto start = std::chrono::steady_clock::now();
    const uint64_t sum = parallel_sum(words.get(), n);
    const double seconds = seconds_since(start);
    MAMBACPP_CHECK(sum == expected);  // also keeps the compiler from dropping the reads
    result.gb_per_s = std::max(result.gb_per_s, double(result.buffer_bytes) / seconds / 1e9);
  }
  return result;
}

SgemmResult measure_sgemm_peak(int n, double min_seconds) {
  MAMBACPP_CHECK(n >= 16);
  const size_t elems = size_t(n) * size_t(n);
  std::vector<float> a(elems), b(elems), c(elems);
  for (size_t i = 0; i < elems; ++i) {
    a[i] = float(i % 17) * 0.01f - 0.08f;
    b[i] = float(i % 13) * 0.01f - 0.06f;
  }
  const auto product = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f,
                c.data(), n);
  };
  product();  // warm-up: OpenBLAS sets up its buffers and threads
  const double flops = 2.0 * double(n) * double(n) * double(n);
  SgemmResult result{0, n, 0};
  const auto begin = std::chrono::steady_clock::now();
  while (result.calls < 2 || seconds_since(begin) < min_seconds) {
    const auto start = std::chrono::steady_clock::now();
    product();
    result.gflop_per_s = std::max(result.gflop_per_s, flops / seconds_since(start) / 1e9);
    ++result.calls;
  }
  return result;
}

double gemm_flops(const MambaConfig& c, int64_t tokens, int64_t logit_positions) {
  const double d = double(c.d_model), e = double(c.d_inner), r = double(c.dt_rank), n = double(c.d_state);
  const double per_layer_params = d * 2 * e        // in_proj
                                  + e * (r + 2 * n)  // x_proj
                                  + r * e            // dt_proj
                                  + e * d;           // out_proj
  const double per_token = 2.0 * per_layer_params * double(c.n_layer);
  const double lm_head = 2.0 * d * double(c.vocab_size);
  return per_token * double(tokens) + lm_head * double(logit_positions);
}

}  // namespace mambacpp
