// Dispatch and threading for the backward ops of ops.h (the scan's is in scan_backward.cpp).
// Results repeat bit for bit. Every sum written here is made by one thread in a fixed order (rows in
// order within a column range; the conv's parameter sums per (sequence, channel block) task, then
// added in sequence order), so it does not depend on the number of threads either; the matrix
// products go to OpenBLAS sgemm, which repeats its results for a given thread count.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "ops/cpu/kernels.h"
#include "ops/ops.h"

namespace mambacpp::ops {
namespace {

using cpu::kMinParallelWork;

// Channels per conv task: a multiple of every kernel's vector width.
constexpr int64_t kChannelBlock = 64;

// Scratch of the calling thread (grows, never shrinks). Not cpu::thread_scratch: the kernels that
// run on this same thread as OpenMP's thread 0 use that one.
float* caller_scratch(size_t count) {
  thread_local std::vector<float> buffer;
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

// The columns [begin, end) of [0, D) owned by this thread of the team: contiguous, whole cache lines.
struct Columns {
  int64_t begin, end;
};
Columns my_columns(int64_t D) {
  const int64_t threads = omp_get_num_threads();
  const int64_t chunk = ((D + threads - 1) / threads + 15) / 16 * 16;
  const int64_t begin = std::min(D, omp_get_thread_num() * chunk);
  return {begin, std::min(D, begin + chunk)};
}

const float* f32_data(const Weight& w) {
  MAMBACPP_CHECK(w.dtype == DType::F32 && "training needs F32 weights");
  return static_cast<const float*>(w.data);
}

// One row of rmsnorm_backward's dx; returns r = 1 / rms(x). With xhat = x r and g = dy w:
// dx = r (g - xhat mean(g xhat)), and mean(g xhat) = r mean(g x).
float rmsnorm_backward_row(const float* x, int64_t D, const float* weight, float eps, const float* dy, float* dx,
                           bool accumulate) {
  float sum_sq = 0.0f, g_dot_x = 0.0f;
  for (int64_t d = 0; d < D; ++d) {
    sum_sq += x[d] * x[d];
    g_dot_x += dy[d] * (weight ? weight[d] : 1.0f) * x[d];
  }
  const float r = 1.0f / std::sqrt(sum_sq / float(D) + eps);
  const float mean_g_xhat = r * g_dot_x / float(D);
  for (int64_t d = 0; d < D; ++d) {
    const float v = r * (dy[d] * (weight ? weight[d] : 1.0f) - x[d] * r * mean_g_xhat);
    dx[d] = accumulate ? dx[d] + v : v;
  }
  return r;
}

// Rows [0, rows) of logits (row stride V) in place, each against its target: returns the sum of
// -log softmax at the targets (0 for an ignored row), added in row order. When `gradient`, each
// row becomes grad_scale (softmax - onehot(target)), or zeros for an ignored row.
double cross_entropy_rows(float* logits, int64_t rows, int64_t V, const int32_t* targets, float grad_scale,
                          bool gradient) {
  const cpu::KernelSet& k = cpu::active_kernel_set();
  double row_loss[kCrossEntropyRows];
#pragma omp parallel for schedule(static) if (rows * V >= kMinParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = logits + r * V;
    const int32_t target = targets[r];
    row_loss[r] = 0.0;
    if (target < 0) {
      if (gradient) std::fill(row, row + V, 0.0f);
      continue;
    }
    const double target_logit = row[target];
    const cpu::SoftmaxNumerators e = k.softmax_numerators(row, V);  // row = exp(logit - max)
    row_loss[r] = double(e.max) + std::log(e.sum) - target_logit;
    if (!gradient) continue;
    const float scale = float(double(grad_scale) / e.sum);
    for (int64_t j = 0; j < V; ++j) row[j] *= scale;
    row[target] -= grad_scale;
  }
  double sum = 0.0;
  for (int64_t r = 0; r < rows; ++r) sum += row_loss[r];
  return sum;
}

}  // namespace

void embedding_backward(const int32_t* ids, int64_t M, const float* dout, int64_t dout_ld, int64_t D, float* dtable) {
  MAMBACPP_CHECK(dout_ld >= D);
  for (int64_t m = 0; m < M; ++m) MAMBACPP_CHECK(ids[m] >= 0);
#pragma omp parallel if (M * D >= kMinParallelWork)
  {
    // Split over columns, so repeated ids never race and each sum runs over the rows in order.
    const Columns cols = my_columns(D);
    for (int64_t m = 0; m < M; ++m) {
      const float* src = dout + m * dout_ld;
      float* dst = dtable + int64_t(ids[m]) * D;
      for (int64_t d = cols.begin; d < cols.end; ++d) dst[d] += src[d];
    }
  }
}

void rmsnorm_backward(const float* x, int64_t x_ld, int64_t M, int64_t D, const float* weight, float eps,
                      const float* dy, int64_t dy_ld, float* dx, int64_t dx_ld, bool accumulate_dx, float* dweight) {
  MAMBACPP_CHECK(x_ld >= D && dy_ld >= D && dx_ld >= D && (weight || !dweight));
  MAMBACPP_CHECK(!dweight || (dx != x && dx != dy));  // dweight reads x and dy after dx is written
  float* inv_rms = dweight ? caller_scratch(size_t(M)) : nullptr;
#pragma omp parallel if (M * D >= kMinParallelWork)
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const float r = rmsnorm_backward_row(x + m * x_ld, D, weight, eps, dy + m * dy_ld, dx + m * dx_ld, accumulate_dx);
      if (inv_rms) inv_rms[m] = r;
    }
    // (the loop's barrier: every r is known) dweight += sum over rows of dy xhat, per column range
    if (dweight) {
      const Columns cols = my_columns(D);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t d = cols.begin; d < cols.end; ++d)
          dweight[d] += dy[m * dy_ld + d] * (x[m * x_ld + d] * inv_rms[m]);
    }
  }
}

void linear_backward(const float* x, int64_t x_ld, int64_t M, const Weight& w, const float* dy, int64_t dy_ld,
                     float* dx, int64_t dx_ld, bool accumulate_dx, float* dw, float* dbias) {
  const int64_t O = w.out_features, K = w.in_features;
  const float* W = f32_data(w);
  MAMBACPP_CHECK(O > 0 && K > 0 && x_ld >= K && dy_ld >= O && (!dx || dx_ld >= K));
  if (M == 0) return;
  // dx [M, K] (=|+=) dy [M, O] @ W [O, K];  dw [O, K] += dy^T @ x [M, K]
  if (dx)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(M), int(K), int(O), 1.0f, dy, int(dy_ld), W, int(K),
                accumulate_dx ? 1.0f : 0.0f, dx, int(dx_ld));
  if (dw)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(O), int(K), int(M), 1.0f, dy, int(dy_ld), x, int(x_ld),
                1.0f, dw, int(K));
  if (!dbias) return;
#pragma omp parallel if (M * O >= kMinParallelWork)
  {
    const Columns cols = my_columns(O);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t o = cols.begin; o < cols.end; ++o) dbias[o] += dy[m * dy_ld + o];
  }
}

void causal_conv1d_silu_backward(const ConvBackwardArgs& a) {
  const ConvArgs& f = a.forward;
  MAMBACPP_CHECK(f.width >= 1 && f.x_ld >= f.channels && a.dout_ld >= f.channels && a.dx_ld >= f.channels);
  const int64_t E = f.channels, W = f.width, blocks = (E + kChannelBlock - 1) / kChannelBlock;
  // Each sequence sums its own dweight [E, W] and dbias [E] here, from zero.
  const int64_t per_sequence = E * (W + 1);
  float* sums = caller_scratch(size_t(f.batch * per_sequence));
  std::fill(sums, sums + f.batch * per_sequence, 0.0f);
  const cpu::KernelSet& k = cpu::active_kernel_set();
#pragma omp parallel for schedule(static) if (f.batch * E * f.length * W >= kMinParallelWork)
  for (int64_t i = 0; i < f.batch * blocks; ++i) {
    const int b = int(i / blocks);
    const int64_t e0 = (i % blocks) * kChannelBlock;
    ConvBackwardArgs task = a;
    task.dweight = a.dweight ? sums + b * per_sequence : nullptr;
    task.dbias = a.dbias ? sums + b * per_sequence + E * W : nullptr;
    k.conv_backward_channels(task, b, e0, std::min(E, e0 + kChannelBlock));
  }
  // Then the sequences' sums are added in sequence order.
  for (int64_t i = 0; i < E * W && a.dweight; ++i) {
    float total = 0.0f;
    for (int b = 0; b < f.batch; ++b) total += sums[b * per_sequence + i];
    a.dweight[i] += total;
  }
  for (int64_t e = 0; e < E && a.dbias; ++e) {
    float total = 0.0f;
    for (int b = 0; b < f.batch; ++b) total += sums[b * per_sequence + E * W + e];
    a.dbias[e] += total;
  }
}

int64_t cross_entropy_scratch_floats(const Weight& w) { return kCrossEntropyRows * w.out_features; }

double lm_head_cross_entropy(const float* h, int64_t h_ld, int64_t M, const Weight& w, const int32_t* targets,
                             float grad_scale, float* dh, int64_t dh_ld, float* dw, float* scratch) {
  const int64_t V = w.out_features, D = w.in_features;
  const float* W = dh ? f32_data(w) : nullptr;  // the loss alone works with any weight dtype
  MAMBACPP_CHECK(V > 0 && D > 0 && h_ld >= D && (!dh || dh_ld >= D));
  for (int64_t m = 0; m < M; ++m)
    if (targets[m] >= V) fail("target token id ", targets[m], " at row ", m, " is not below the vocabulary size ", V);
  double loss = 0.0;
  for (int64_t m0 = 0; m0 < M; m0 += kCrossEntropyRows) {
    const int64_t rows = std::min(kCrossEntropyRows, M - m0);
    const float* hb = h + m0 * h_ld;
    // logits [rows, V] = h [rows, D] @ W^T, turned into dlogits in place
    linear(hb, h_ld, rows, w, nullptr, scratch, V, false);
    loss += cross_entropy_rows(scratch, rows, V, targets + m0, grad_scale, dh != nullptr);
    if (!dh) continue;
    // dh [rows, D] = dlogits @ W [V, D];  dw [V, D] += dlogits^T @ h
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(D), int(V), 1.0f, scratch, int(V), W, int(D),
                0.0f, dh + m0 * dh_ld, int(dh_ld));
    if (dw)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(V), int(D), int(rows), 1.0f, scratch, int(V), hb,
                  int(h_ld), 1.0f, dw, int(D));
  }
  return loss;
}

}  // namespace mambacpp::ops
