// Plain fp32 scalar twins of ops.h, same signatures: the slow truth every fast kernel is tested
// against. Written for clarity, not speed.
#pragma once

#include "ops/ops.h"

namespace mambacpp::ops::reference {

void embedding(const int32_t* ids, int64_t M, const Weight& table, float* out, int64_t out_ld);
void rmsnorm(const float* x, int64_t x_ld, int64_t M, int64_t D, const float* weight, float eps, float* y,
             int64_t y_ld);
void linear(const float* x, int64_t x_ld, int64_t M, const Weight& w, const float* bias, float* y, int64_t y_ld,
            bool accumulate);
void causal_conv1d_silu(const ConvArgs& a);
void selective_scan(const ScanArgs& a);

// The same for channels [e0, e1) of sequence b only. The generic kernel level runs these in
// parallel over (sequence, channel block); fast kernels use them for channels left over from
// their vector width.
void causal_conv1d_silu_channels(const ConvArgs& a, int b, int64_t e0, int64_t e1);
void selective_scan_channels(const ScanArgs& a, int b, int64_t e0, int64_t e1);

}  // namespace mambacpp::ops::reference
