// Assembles the AVX2 kernel set and owns the per-thread scratch. Kept out of the *_avx2.cpp files
// on purpose: anything inline that those files instantiate (std::vector, std::sqrt, ...) could be
// emitted with AVX instructions and picked by the linker for generic callers too, so they use
// only intrinsics, their own internal helpers, and functions defined in files like this one.
#include <cstdlib>
#include <memory>

#include "ops/cpu/kernels.h"

namespace mambacpp::ops::cpu {

void linear_columns_avx2(const LinearArgs& a, int64_t o0, int64_t o1);
void widen_avx2(const Weight& w, int64_t first, int64_t count, float* dst);
void rmsnorm_row_avx2(const float* x, int64_t D, const float* weight, float eps, float* y);
void conv_channels_avx2(const ConvArgs& a, int b, int64_t e0, int64_t e1);
void scan_channels_avx2(const ScanArgs& a, int b, int64_t e0, int64_t e1);
void conv_backward_channels_avx2(const ConvBackwardArgs& a, int b, int64_t e0, int64_t e1);
void scan_backward_channels_avx2(const ScanBackwardArgs& a, int b, int64_t e0, int64_t e1, float* dbc,
                                 float* dparams);
SoftmaxNumerators softmax_numerators_avx2(float* x, int64_t n);

const KernelSet& avx2_kernels() {
  static constexpr KernelSet set{"avx2", linear_columns_avx2, widen_avx2, rmsnorm_row_avx2, conv_channels_avx2,
                                 scan_channels_avx2, conv_backward_channels_avx2,
                                 scan_backward_channels_avx2, softmax_numerators_avx2};
  return set;
}

float* thread_scratch(size_t count) {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<float, Free> buffer;
  thread_local size_t capacity = 0;
  if (count > capacity) {
    const size_t bytes = (count * sizeof(float) + 63) / 64 * 64;
    buffer.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    MAMBACPP_CHECK(buffer != nullptr);
    capacity = bytes / sizeof(float);
  }
  return buffer.get();
}

}  // namespace mambacpp::ops::cpu
