#include "train/optimizer.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/cpu_features.h"
#include "core/error.h"
#include "train/optimizer_kernels.h"

// GCC fuses a multiply and an add into an FMA, even across intrinsics (its default outside ISO C
// is -ffp-contract=fast); that rounds differently from the other variant and from PyTorch.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace mambacpp {

namespace train_kernels {

void adamw_span(float* p, const float* g, float* m, float* v, int64_t n, float decay_factor, const AdamWScalars& k) {
  for (int64_t i = 0; i < n; ++i) {
    const float mi = k.beta1 * m[i] + k.one_minus_beta1 * g[i];
    const float vi = k.beta2 * v[i] + k.one_minus_beta2 * g[i] * g[i];
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / k.bias2_sqrt + k.eps;
    p[i] = p[i] * decay_factor - k.step_size * mi / denom;
  }
}

double sum_of_squares(const float* x, int64_t n) {
  double lanes[kSquareLanes] = {};
  int64_t i = 0;
  for (; i + kSquareLanes <= n; i += kSquareLanes)
    for (int j = 0; j < kSquareLanes; ++j) lanes[j] += double(x[i + j]) * double(x[i + j]);
  for (int j = 0; i < n; ++i, ++j) lanes[j] += double(x[i]) * double(x[i]);
  double sum = 0;
  for (double lane : lanes) sum += lane;
  return sum;
}

}  // namespace train_kernels

namespace {

using train_kernels::AdamWScalars;

// The variant for this call (core/cpu_features.h; MAMBACPP_CPU=generic caps it). Both give the
// same bits; AVX2 is faster (the generic loop's square root does not vectorise).
bool use_avx2() { return cpu_kernel_level() != "generic"; }

// mamba_ssm's convention: tensors of fewer than two dimensions in the checkpoint files (norms,
// biases, D) and A_log take no weight decay. The conv weight is [E, 1, W] in files (held as
// [E, W] among the vectors) and is decayed, so the rank comes from file_shape, not ParamKind.
bool excluded_from_decay(const ParamSpec& s) {
  return s.file_shape.size() < 2 || s.role == ParamRole::ALog || s.role == ParamRole::D;
}

// The thread's share [begin, end) of `n` elements, contiguous, in thread order.
std::pair<int64_t, int64_t> thread_share(int64_t n) {
  const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
  return {n * t / threads, n * (t + 1) / threads};
}

void check_f32_like(const Parameters& p, const Parameters& like, const char* what) {
  MAMBACPP_CHECK(p.weight_type() == WeightType::F32);
  for (ParamKind kind : {ParamKind::Vector, ParamKind::Matrix})
    if (p.table().region_elements(kind) != like.table().region_elements(kind))
      internal_error(__FILE__, __LINE__, what);
}

}  // namespace

AdamW::AdamW(const MambaConfig& config, const AdamWOptions& options)
    : options_(options), m_(config, WeightType::F32), v_(config, WeightType::F32) {
  for (const ParamSpec& s : m_.table().specs())
    decay_.push_back(options.exclude_vectors_and_a_log && excluded_from_decay(s) ? 0.0f : float(options.weight_decay));
}

void AdamW::step(Parameters& params, const Parameters& grads, double lr) {
  check_f32_like(params, m_, "AdamW::step: parameters of another shape");
  check_f32_like(grads, m_, "AdamW::step: gradients of another shape");
  ++step_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const AdamWScalars k{float(b1),
                       float(b2),
                       float(1 - b1),
                       float(1 - b2),
                       float(options_.eps),
                       float(lr / (1 - std::pow(b1, double(step_)))),
                       float(std::sqrt(1 - std::pow(b2, double(step_))))};
  const std::vector<ParamSpec>& specs = m_.table().specs();
  const auto adamw_span = use_avx2() ? train_kernels::adamw_span_avx2 : train_kernels::adamw_span;
  for (ParamKind kind : {ParamKind::Vector, ParamKind::Matrix}) {
    float* p = params.region(kind);
    const float* g = grads.region(kind);
    float* m = m_.region(kind);
    float* v = v_.region(kind);
    const int64_t n = m_.table().region_elements(kind);
    // One pass over the region: each thread takes a contiguous share and walks the tensors that
    // overlap it (the specs of a kind are in offset order), each with its own decay. The padding
    // between tensors is never touched, so it stays zero.
#pragma omp parallel
    {
      const auto [begin, end] = thread_share(n);
      for (size_t i = 0; i < specs.size(); ++i) {
        const ParamSpec& s = specs[i];
        if (s.kind != kind) continue;
        const int64_t lo = std::max(begin, s.offset), hi = std::min(end, s.offset + s.numel());
        if (lo >= hi) continue;
        const float decay_factor = float(1 - lr * double(decay_[i]));
        adamw_span(p + lo, g + lo, m + lo, v + lo, hi - lo, decay_factor, k);
      }
    }
  }
}

// Step 0 (the first optimizer step) gets max_lr / warmup, step warmup - 1 gets max_lr: no step
// is taken at a learning rate of zero.
double learning_rate(int64_t step, int64_t warmup, int64_t total_steps, double max_lr, double min_lr) {
  MAMBACPP_CHECK(step >= 0 && warmup >= 0);
  if (step < warmup) return double(step + 1) / double(warmup) * max_lr;
  if (step >= total_steps) return min_lr;
  const double progress = double(step - warmup) / double(total_steps - warmup);
  return min_lr + 0.5 * (1 + std::cos(std::numbers::pi * progress)) * (max_lr - min_lr);
}

namespace {

// The sum of squares is taken over fixed blocks, each summed in the same order, and the block
// sums are added in block order: the norm does not depend on the thread count.
constexpr int64_t kNormBlock = int64_t(1) << 16;

double sum_of_squares(const float* x, int64_t n) {
  const auto block_sum = use_avx2() ? train_kernels::sum_of_squares_avx2 : train_kernels::sum_of_squares;
  const int64_t blocks = (n + kNormBlock - 1) / kNormBlock;
  std::vector<double> partial(static_cast<size_t>(blocks));
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b)
    partial[size_t(b)] = block_sum(x + b * kNormBlock, std::min(kNormBlock, n - b * kNormBlock));
  double sum = 0;
  for (double s : partial) sum += s;
  return sum;
}

void scale(float* x, int64_t n, float factor) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

}  // namespace

double clip_grad_norm(Parameters& grads, double max_norm) {
  constexpr ParamKind kKinds[] = {ParamKind::Vector, ParamKind::Matrix};
  double sum = 0;
  for (ParamKind kind : kKinds) sum += sum_of_squares(grads.region(kind), grads.table().region_elements(kind));
  const double norm = std::sqrt(sum);
  // As torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied only when below 1.
  // A NaN or infinite norm fails the comparison and scales nothing (the caller skips the step).
  if (max_norm > 0 && std::isfinite(norm)) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1)
      for (ParamKind kind : kKinds) scale(grads.region(kind), grads.table().region_elements(kind), float(coef));
  }
  return norm;
}

}  // namespace mambacpp
