// CPU kernel sets behind ops.h. Each ISA level (generic, avx2) provides the same tile functions;
// ops.cpp picks one set once at run time and does the threading, so the kernels themselves are
// single-threaded and free of ISA branches. Functions of the avx2 set live in *_avx2.cpp files
// (compiled with -mavx2 -mfma -mf16c) and may only be called once cpu_features() says so.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops/ops.h"

namespace mambacpp::ops::cpu {

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
};

const KernelSet& generic_kernels();
const KernelSet& avx2_kernels();

// Per-thread scratch of at least `count` floats, 64-byte aligned, reused between calls (grows,
// never shrinks). Defined in a file without ISA flags, so no AVX code leaks into shared inline
// functions (see the note atop kernels.cpp).
float* thread_scratch(size_t count);

}  // namespace mambacpp::ops::cpu
