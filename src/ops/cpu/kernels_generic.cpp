// The generic kernel set: plain C++ for any x86-64 (or other) CPU. Written so the compiler can
// vectorise it with the baseline ISA; conv and scan are the reference itself, run in parallel.
#include <algorithm>
#include <cmath>

#include "core/half.h"
#include "ops/cpu/kernels.h"
#include "ops/reference.h"

namespace mambacpp::ops::cpu {
namespace {

void widen_generic(const Weight& w, int64_t first, int64_t count, float* dst) {
  switch (w.dtype) {
    case DType::F32: {
      const float* src = static_cast<const float*>(w.data) + first;
      for (int64_t i = 0; i < count; ++i) dst[i] = src[i];
      return;
    }
    case DType::BF16: {
      const uint16_t* src = static_cast<const uint16_t*>(w.data) + first;
      for (int64_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(src[i]);
      return;
    }
    case DType::F16: {
      const uint16_t* src = static_cast<const uint16_t*>(w.data) + first;
      for (int64_t i = 0; i < count; ++i) dst[i] = f16_to_f32(src[i]);
      return;
    }
    default: MAMBACPP_CHECK(false && "weights must be F32, BF16 or F16");
  }
}

// Eight independent partial sums: vectorisable without reassociating a single chain.
float dot(const float* a, const float* b, int64_t n) {
  float part[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) part[j] += a[i + j] * b[i + j];
  float sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void linear_columns_generic(const LinearArgs& a, int64_t o0, int64_t o1) {
  const int64_t K = a.w.in_features;
  const bool f32 = a.w.dtype == DType::F32;
  float* row = f32 ? nullptr : thread_scratch(size_t(K));
  for (int64_t o = o0; o < o1; ++o) {
    const float* w = f32 ? static_cast<const float*>(a.w.data) + o * K : row;
    if (!f32) widen_generic(a.w, o * K, K, row);
    for (int64_t m = 0; m < a.M; ++m) {
      const float v = dot(w, a.x + m * a.x_ld, K) + (a.bias ? a.bias[o] : 0.0f);
      float& dst = a.y[m * a.y_ld + o];
      dst = a.accumulate ? dst + v : v;
    }
  }
}

void rmsnorm_row_generic(const float* x, int64_t D, const float* weight, float eps, float* y) {
  const float inv = 1.0f / std::sqrt(dot(x, x, D) / float(D) + eps);
  for (int64_t d = 0; d < D; ++d) y[d] = x[d] * inv * (weight ? weight[d] : 1.0f);
}

SoftmaxNumerators softmax_numerators_generic(float* x, int64_t n) {
  float max = x[0];
  for (int64_t i = 1; i < n; ++i) max = std::max(max, x[i]);
  double sum = 0.0;  // NaN from exp(NaN - max) or inf - inf
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  return {max, sum};
}

}  // namespace

const KernelSet& generic_kernels() {
  static constexpr KernelSet set{"generic", linear_columns_generic, widen_generic, rmsnorm_row_generic,
                                 reference::causal_conv1d_silu_channels, reference::selective_scan_channels,
                                 reference::causal_conv1d_silu_backward_channels,
                                 reference::selective_scan_backward_channels, softmax_numerators_generic};
  return set;
}

}  // namespace mambacpp::ops::cpu
