// Dispatch and threading for ops.h: picks a kernel set (ops/cpu/kernels.h) once from the CPU's
// features, splits each op into independent pieces for OpenMP (output columns of linear,
// (sequence, channel block) pairs of conv and scan, rows of rmsnorm and embedding), and sends
// linear with many rows to OpenBLAS sgemm.
#include "ops/ops.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "core/cpu_features.h"
#include "ops/cpu/kernels.h"

namespace mambacpp::ops {
namespace {

const cpu::KernelSet* kernel_set_for(std::string_view level) {
  if (level == "generic") return &cpu::generic_kernels();
  if ((level == "avx2" || level == "avx512") && cpu_features().avx2) return &cpu::avx2_kernels();
  return nullptr;
}

std::atomic<const cpu::KernelSet*>& active_kernels() {
  static std::atomic<const cpu::KernelSet*> set{kernel_set_for(cpu_kernel_level())};
  return set;
}

const cpu::KernelSet& kernels() { return *active_kernels().load(std::memory_order_relaxed); }

std::atomic<LinearPath> forced_linear_path{LinearPath::Auto};

using cpu::kMinParallelWork;

// From this many rows of x, linear goes to sgemm. Measured with bench/ops_bench on the 2-core AMD
// EPYC (one thread, weights in DRAM, in_proj and out_proj shapes): with F32 weights the streaming
// kernel is ahead of sgemm up to M = 32, even at 48 and behind from 64; BF16 weights need a
// widening pass before sgemm, and streaming them stays ahead through 64 (128: mixed). See
// docs/PERFORMANCE.md, "Op micro-benchmarks".
int64_t gemm_min_rows(DType weight_dtype) { return weight_dtype == DType::F32 ? 64 : 128; }

// Half-precision weights are widened for sgemm one panel of rows at a time, so the fp32 copy
// stays small (and in cache) even for a 50k-row lm_head.
constexpr int64_t kPanelFloats = int64_t(1) << 20;

void linear_streaming(const cpu::LinearArgs& a) {
  const int64_t O = a.w.out_features;
  const bool parallel = O * a.w.in_features * std::max<int64_t>(a.M, 1) >= kMinParallelWork;
#pragma omp parallel if (parallel)
  {
    // Contiguous column ranges, in multiples of 8 rows, one per thread.
    const int64_t threads = omp_get_num_threads();
    const int64_t chunk = ((O + threads - 1) / threads + 7) / 8 * 8;
    const int64_t o0 = std::min(O, omp_get_thread_num() * chunk);
    const int64_t o1 = std::min(O, o0 + chunk);
    if (o0 < o1) kernels().linear_columns(a, o0, o1);
  }
}

// y = x w^T + bias (+ y) through sgemm; w must be F32 here. y's columns are [0, n).
void sgemm_rows(const cpu::LinearArgs& a, const float* w, int64_t n, float* y, float beta) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(a.M), int(n), int(a.w.in_features), 1.0f, a.x,
              int(a.x_ld), w, int(a.w.in_features), beta, y, int(a.y_ld));
}

void linear_gemm(const cpu::LinearArgs& a) {
  const int64_t O = a.w.out_features, K = a.w.in_features;
  float beta = a.accumulate ? 1.0f : 0.0f;
  if (a.bias) {  // put the bias into y first, then let sgemm add to it
    for (int64_t m = 0; m < a.M; ++m) {
      float* y = a.y + m * a.y_ld;
      for (int64_t o = 0; o < O; ++o) y[o] = (a.accumulate ? y[o] : 0.0f) + a.bias[o];
    }
    beta = 1.0f;
  }
  if (a.w.dtype == DType::F32) return sgemm_rows(a, static_cast<const float*>(a.w.data), O, a.y, beta);
  thread_local std::vector<float> panel;
  const int64_t rows_per_panel = std::max<int64_t>(8, kPanelFloats / std::max<int64_t>(K, 1));
  if (panel.size() < size_t(std::min(O, rows_per_panel) * K)) panel.resize(size_t(std::min(O, rows_per_panel) * K));
  float* wide = panel.data();  // the calling thread's buffer, filled by the whole team
  for (int64_t o = 0; o < O; o += rows_per_panel) {
    const int64_t rows = std::min(rows_per_panel, O - o);
#pragma omp parallel for schedule(static) if (rows * K >= kMinParallelWork)
    for (int64_t r = 0; r < rows; ++r) kernels().widen(a.w, (o + r) * K, K, wide + r * K);
    sgemm_rows(a, wide, rows, a.y + o, beta);
  }
}

}  // namespace

std::string_view kernel_level() { return kernels().level; }

const cpu::KernelSet& cpu::active_kernel_set() { return kernels(); }

void set_kernel_level_for_testing(std::string_view level) {
  const cpu::KernelSet* set = kernel_set_for(level);
  if (!set) fail("kernel level '", level, "' is unknown or not supported by this CPU (", cpu_features().model_name, ")");
  active_kernels().store(set);
}

void force_linear_path_for_testing(LinearPath path) { forced_linear_path.store(path); }

bool linear_uses_gemm(int64_t M, DType weight_dtype) {
  switch (forced_linear_path.load(std::memory_order_relaxed)) {
    case LinearPath::Streaming: return false;
    case LinearPath::Gemm: return true;
    default: return M >= gemm_min_rows(weight_dtype);
  }
}

void embedding(const int32_t* ids, int64_t M, const Weight& table, float* out, int64_t out_ld) {
  const int64_t D = table.in_features;
  for (int64_t m = 0; m < M; ++m) MAMBACPP_CHECK(ids[m] >= 0 && ids[m] < table.out_features);
#pragma omp parallel for schedule(static) if (M * D >= kMinParallelWork)
  for (int64_t m = 0; m < M; ++m) kernels().widen(table, int64_t(ids[m]) * D, D, out + m * out_ld);
}

void rmsnorm(const float* x, int64_t x_ld, int64_t M, int64_t D, const float* weight, float eps, float* y,
             int64_t y_ld) {
#pragma omp parallel for schedule(static) if (M * D >= kMinParallelWork)
  for (int64_t m = 0; m < M; ++m) kernels().rmsnorm_row(x + m * x_ld, D, weight, eps, y + m * y_ld);
}

void linear(const float* x, int64_t x_ld, int64_t M, const Weight& w, const float* bias, float* y, int64_t y_ld,
            bool accumulate) {
  MAMBACPP_CHECK(x_ld >= w.in_features && y_ld >= w.out_features);
  if (M == 0 || w.out_features == 0) return;
  const cpu::LinearArgs a{x, x_ld, M, w, bias, y, y_ld, accumulate};
  if (linear_uses_gemm(M, w.dtype)) linear_gemm(a);
  else linear_streaming(a);
}

namespace {

// Runs body(b, e0, e1) over every (sequence, block of `block` channels) pair in parallel.
template <class Body>
void for_channel_blocks(int batch, int64_t channels, int64_t block, int64_t work_per_channel, Body body) {
  const int64_t blocks = (channels + block - 1) / block;
  const int64_t tasks = batch * blocks;
#pragma omp parallel for schedule(static) if (batch * channels * work_per_channel >= kMinParallelWork)
  for (int64_t i = 0; i < tasks; ++i) {
    const int64_t e0 = (i % blocks) * block;
    body(int(i / blocks), e0, std::min(channels, e0 + block));
  }
}

// Channels per parallel task: a multiple of every kernel's vector width.
constexpr int64_t kChannelBlock = 64;

}  // namespace

void causal_conv1d_silu(const ConvArgs& a) {
  MAMBACPP_CHECK(a.width >= 1 && a.x_ld >= a.channels && a.out_ld >= a.channels);
  const cpu::KernelSet& k = kernels();
  for_channel_blocks(a.batch, a.channels, kChannelBlock, a.length * a.width,
                     [&](int b, int64_t e0, int64_t e1) { k.conv_channels(a, b, e0, e1); });
}

void selective_scan(const ScanArgs& a) {
  MAMBACPP_CHECK(a.x_ld >= a.d_inner && a.dt_ld >= a.d_inner && a.y_ld >= a.d_inner && a.bc_ld >= a.d_state);
  const cpu::KernelSet& k = kernels();
  for_channel_blocks(a.batch, a.d_inner, kChannelBlock, a.length * a.d_state * 8,
                     [&](int b, int64_t e0, int64_t e1) { k.scan_channels(a, b, e0, e1); });
}

}  // namespace mambacpp::ops
