// CPU kernel sets behind ops.h. Each ISA level (generic, avx2) provides the same tile functions;
// ops.cpp picks one set once at run time and does the threading, so the kernels themselves are
// single-threaded and free of ISA branches. Functions of the avx2 set live in *_avx2.cpp files
// (compiled with -mavx2 -mfma -mf16c) and may only be called once cpu_features() says so.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops/ops.h"

namespace mambacpp::ops::cpu {

// Below this many multiply-adds an op runs on the calling thread: waking the team costs more.
inline constexpr int64_t kMinParallelWork = 1 << 15;

// The arguments of ops::linear in one struct.
struct LinearArgs {
  const float* x = nullptr;
  int64_t x_ld = 0, M = 0;
  Weight w;
  const float* bias = nullptr;
  float* y = nullptr;
  int64_t y_ld = 0;
  bool accumulate = false;
};

struct SoftmaxNumerators {
  float max;
  double sum;
};

struct KernelSet {
  const char* level;  // "generic" / "avx2"
  // Output columns [o0, o1) of linear for all M rows of x: each weight row is read from memory
  // once and used for every row of x (the decode path, where the weights dominate the traffic).
  void (*linear_columns)(const LinearArgs& a, int64_t o0, int64_t o1);
  // dst[i] = float(w.data[first + i]) for i < count: F32, BF16 or F16 widened to fp32.
  void (*widen)(const Weight& w, int64_t first, int64_t count, float* dst);
  // One row of rmsnorm: y = x / sqrt(mean(x^2) + eps) * weight (weight may be null). y may be x.
  void (*rmsnorm_row)(const float* x, int64_t D, const float* weight, float eps, float* y);
  // Channels [e0, e1) of sequence b, for all tokens of the chunk.
  void (*conv_channels)(const ConvArgs& a, int b, int64_t e0, int64_t e1);
  void (*scan_channels)(const ScanArgs& a, int b, int64_t e0, int64_t e1);
  // causal_conv1d_silu_backward for channels [e0, e1) of sequence b: overwrites their dx and adds
  // their sums over the sequence to a.dweight and a.dbias (each when not null).
  void (*conv_backward_channels)(const ConvBackwardArgs& a, int b, int64_t e0, int64_t e1);
  // selective_scan_backward for channels [e0, e1) of sequence b, as reference.h's
  // selective_scan_backward_channels: dbc [length, 2N] added to, dparams [E * N + 2E] written.
  void (*scan_backward_channels)(const ScanBackwardArgs& a, int b, int64_t e0, int64_t e1, float* dbc,
                                 float* dparams);
  // One row of lm_head_cross_entropy's logits, n >= 1: x[i] = exp(x[i] - max x) in place; returns
  // the max and the sum of the new x in double (the sum is NaN when a logit is NaN or the max infinite).
  SoftmaxNumerators (*softmax_numerators)(float* x, int64_t n);
};

const KernelSet& generic_kernels();
const KernelSet& avx2_kernels();
// The set ops.h dispatches to now (chosen once, or by set_kernel_level_for_testing).
const KernelSet& active_kernel_set();

// Per-thread scratch of at least `count` floats, 64-byte aligned, reused between calls (grows,
// never shrinks). Defined in a file without ISA flags, so no AVX code leaks into shared inline
// functions (see the note atop kernels.cpp).
float* thread_scratch(size_t count);

}  // namespace mambacpp::ops::cpu
