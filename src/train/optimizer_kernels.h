// The optimizer's element loops, in a generic and an AVX2 variant that give the same bits (the
// same IEEE operations in the same order, no FMA), so a run may resume on another machine.
// optimizer.cpp picks the variant per call from core/cpu_features.h.
#pragma once

#include <cstdint>

namespace mambacpp::train_kernels {

// The step's scalars, in the order PyTorch's single-tensor AdamW applies them.
struct AdamWScalars {
  float beta1, beta2, one_minus_beta1, one_minus_beta2, eps;
  float step_size;   // lr / (1 - beta1^t)
  float bias2_sqrt;  // sqrt(1 - beta2^t)
};

// Elements [0, n) of one tensor: p *= decay_factor; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= step_size * m / (sqrt(v) / sqrt(1-b2^t) + eps).
void adamw_span(float* p, const float* g, float* m, float* v, int64_t n, float decay_factor, const AdamWScalars& k);
void adamw_span_avx2(float* p, const float* g, float* m, float* v, int64_t n, float decay_factor,
                     const AdamWScalars& k);

// The sum of x[i]^2 in double over kSquareLanes accumulators (element i goes to lane i mod 8 of
// the full groups of 8; the tail's elements to lanes 0, 1, ...), added in lane order at the end.
inline constexpr int kSquareLanes = 8;
double sum_of_squares(const float* x, int64_t n);
double sum_of_squares_avx2(const float* x, int64_t n);

}  // namespace mambacpp::train_kernels
