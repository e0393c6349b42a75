// The two ceilings a CPU inference benchmark is judged against, measured on this machine, and
// what one Mamba forward costs in their units:
//  - memory read bandwidth: decode reads every weight once per step, so bytes / bandwidth is
//    the fastest a step can be;
//  - sgemm peak (OpenBLAS): prefill is GEMM-bound, so GEMM FLOPs / peak is the fastest it can be.
// Both measurements use the current thread count (core/threads.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include "io/config.h"

namespace mambacpp {

struct BandwidthResult {
  double gb_per_s = 0;  // best of the repetitions, 1 GB = 1e9 bytes
  size_t buffer_bytes = 0;
  int repetitions = 0;
};
// Streams a buffer of `bytes` (choose it well above the last-level cache) with all threads,
// `repetitions` times after one untimed pass that also faults the pages in.
BandwidthResult measure_read_bandwidth(size_t bytes, int repetitions);

struct SgemmResult {
  double gflop_per_s = 0;  // best of the timed calls
  int n = 0;               // square size of the product
  int calls = 0;           // timed calls
};
// cblas_sgemm of n x n by n x n, one warm-up then calls until `min_seconds` have passed (at least 2).
SgemmResult measure_sgemm_peak(int n, double min_seconds);

// FLOPs of the matrix products in one forward of `tokens` positions of one sequence: per layer
// in_proj, x_proj, dt_proj and out_proj for every position, plus lm_head for `logit_positions`.
double gemm_flops(const MambaConfig& c, int64_t tokens, int64_t logit_positions);

}  // namespace mambacpp
