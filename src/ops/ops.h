// The ops Mamba needs, each behind one signature. Shapes are in comments; "ld" is the distance in
// elements between consecutive rows (tokens), so ops read column slices of a wider buffer (x and
// z inside in_proj's output, dt/B/C inside x_proj's) without copies. Tokens of a [batch, length]
// chunk are rows b * length + t.
//
// Rule: every op overwrites its output, except where `accumulate` says += (residual stream).
// Each op has an fp32 scalar twin in reference.h that tests compare against; the functions here
// pick the fastest kernel for this CPU once (core/cpu_features.h) and are what the model calls.
#pragma once

#include <cstdint>
#include <string_view>

#include "core/tensor.h"

namespace mambacpp::ops {

// A weight matrix as held in memory: [out_features, in_features] row-major (torch.nn.Linear's
// layout), in F32, BF16 or F16; kernels widen to fp32.
struct Weight {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t out_features = 0, in_features = 0;
};

// out[m, :] = table[ids[m], :]   ids [M] (each < table.out_features), table [V, D], out [M, D]
void embedding(const int32_t* ids, int64_t M, const Weight& table, float* out, int64_t out_ld);

// y[m, :] = x[m, :] / sqrt(mean(x[m, :]^2) + eps) * weight   x, y [M, D]; weight [D] or null
// (weightless, as Falcon-Mamba's dt/B/C norms). y may equal x.
void rmsnorm(const float* x, int64_t x_ld, int64_t M, int64_t D, const float* weight, float eps, float* y,
             int64_t y_ld);

// y[m, :] (=|+=) x[m, :] @ w^T + bias    x [M, in], w [out, in], bias [out] or null, y [M, out]
void linear(const float* x, int64_t x_ld, int64_t M, const Weight& w, const float* bias, float* y, int64_t y_ld,
            bool accumulate);

// Causal depthwise conv over time, then SiLU, for `batch` sequences of `length` tokens that
// continue from `state`:
//   out[b,t,e] = silu(bias[e] + sum_k weight[e,k] * xin[b, t - (W-1) + k, e])
// where positions before t = 0 come from state [B, E, W-1] (oldest first). On return state holds
// the last W-1 inputs of each sequence. x, out: [B*length, E]; weight [E, W]; bias [E] or null.
//
// Packed documents: `positions` [B*length] (row b*length + t, null: none) gives each token's
// position inside its document; each must be 0 (a new document starts) or the previous token's
// plus one (the first token of a row: any value >= 0, > 0 continuing from `state`). The tap at
// offset j = W-1-k reads zero when j > positions[t] (it would reach before the document's start),
// and the state left behind keeps only the inputs of the row's last document (zeros before it), as
// if that document had run alone.
struct ConvArgs {
  int batch = 0;
  int64_t length = 0, channels = 0;
  int width = 0;
  const float* x = nullptr;
  int64_t x_ld = 0;
  const float* weight = nullptr;
  const float* bias = nullptr;
  float* state = nullptr;
  float* out = nullptr;
  int64_t out_ld = 0;
  const int32_t* positions = nullptr;
};
void causal_conv1d_silu(const ConvArgs& a);

// Selective scan with the discretisation, D skip and gate fused, continuing from `state`:
//   dt        = softplus(dt_in[b,t,e] + dt_bias[e])
//   h[e,n]    = exp(dt * A[e,n]) * h[e,n] + dt * Bm[b,t,n] * x[b,t,e]
//   y[b,t,e]  = (sum_n h[e,n] * Cm[b,t,n] + D[e] * x[b,t,e]) * silu(z[b,t,e])
// state [B, E, N] in/out (fp32); A [E, N] = -exp(A_log); x, dt_in, z, y: [B*length, E];
// Bm, Cm: [B*length, N]. dt_bias, D and z may be null (no bias, no skip, no gate). The state is never
// written per token, only at the end.
// Packed documents: with `positions` (as ConvArgs::positions), h is set to zero before every token
// at position 0, so each document starts from the zero state; a row whose first position is > 0
// continues from `state`.
struct ScanArgs {
  int batch = 0;
  int64_t length = 0, d_inner = 0, d_state = 0;
  const float* x = nullptr;
  int64_t x_ld = 0;
  const float* dt = nullptr;
  int64_t dt_ld = 0;
  const float* dt_bias = nullptr;
  const float* A = nullptr;
  const float* Bm = nullptr;
  const float* Cm = nullptr;
  int64_t bc_ld = 0;
  const float* D = nullptr;
  const float* z = nullptr;
  int64_t z_ld = 0;
  float* state = nullptr;
  float* y = nullptr;
  int64_t y_ld = 0;
  // Training: when not null, the state before tokens 0, every, 2*every, ... of each sequence is
  // saved here, [B, ceil(length / every), E, N], for selective_scan_backward to recompute from.
  float* checkpoints = nullptr;
  int64_t checkpoint_every = 0;
  const int32_t* positions = nullptr;  // [B*length] or null, see above
};
void selective_scan(const ScanArgs& a);

// ---------------------------------------------------------------------------------------------
// Backward. Each backward op takes the forward's inputs and dL/d(output) and writes dL/d(input)
// (overwriting, unless `accumulate_dx` says +=); parameter gradients are always accumulated (+=),
// so a caller zeroes them once per optimizer step. Training holds weights in F32 only.

// dtable[ids[m], :] += dout[m, :]    dtable [V, D] fp32 (a tied head's gradient is added here too)
void embedding_backward(const int32_t* ids, int64_t M, const float* dout, int64_t dout_ld, int64_t D, float* dtable);

// From rmsnorm's x and dL/dy: dx (= or +=), dweight += (dweight null when weight is null).
void rmsnorm_backward(const float* x, int64_t x_ld, int64_t M, int64_t D, const float* weight, float eps,
                      const float* dy, int64_t dy_ld, float* dx, int64_t dx_ld, bool accumulate_dx, float* dweight);

// y = x @ w^T + bias:  dx (= or +=) dy @ w (skipped when dx is null), dw += dy^T @ x [out, in],
// dbias += column sums of dy (when not null). w must be F32.
void linear_backward(const float* x, int64_t x_ld, int64_t M, const Weight& w, const float* dy, int64_t dy_ld,
                     float* dx, int64_t dx_ld, bool accumulate_dx, float* dw, float* dbias);

// causal_conv1d_silu backward. forward.state is the state the forward STARTED from, read only (null:
// zeros), forward.positions as in the forward. Recomputes the pre-activation from a.x. dout =
// dL/d(out) [B*length, E]; dx [B*length, E] is overwritten (dx may alias neither x nor dout);
// dweight [E, W] and dbias [E] (when not null) accumulate.
// States: dstate_final [B, E, W-1] (may be null: zero) is dL/d(the state the forward left behind):
// its entries that were inputs of the row add to dx, those still from the initial state to dstate.
// dstate [B, E, W-1] (may be null) is overwritten with dL/d(initial state): the taps of the first
// W-1 tokens that read it, plus dstate_final's share. dstate may not alias dstate_final.
struct ConvBackwardArgs {
  ConvArgs forward;  // batch, length, channels, width, x, weight, bias, state (read), positions (out unused)
  const float* dout = nullptr;
  int64_t dout_ld = 0;
  float* dx = nullptr;
  int64_t dx_ld = 0;
  float* dweight = nullptr;
  float* dbias = nullptr;
  const float* dstate_final = nullptr;
  float* dstate = nullptr;
};
void causal_conv1d_silu_backward(const ConvBackwardArgs& a);

// selective_scan backward, the hardware-aware way: forward.checkpoints (saved by the forward with
// the same checkpoint_every) gives the state at each chunk start; the states inside a chunk are
// recomputed, the reverse scan runs chunk by chunk from the last, and memory stays O(chunk x N) per
// channel. forward.state and forward.y are not read. dy = dL/d(y) (y is the gated output).
// Overwritten: dx, ddt (dL/d(dt_in), before bias and softplus) [B*length, E]; dB, dC [B*length, N]
// (at ld dbc_ld); dz [B*length, E] (when forward.z). Accumulated: dD [E], ddt_bias [E] (when the
// forward had them), dA_log [E, N] (dL/dA_log, through A = -exp(A_log)).
// States: checkpoint 0 is the state the forward started from, so the recomputation starts right.
// dstate_final [B, E, N] (may be null: zero) is dL/d(final state), where the reverse scan starts;
// dstate [B, E, N] (may be null) is overwritten with dL/d(initial state) = exp(dt_0 A) dL/dh_0.
// With forward.positions, no gradient crosses a document start (the state before it is zero), and
// dstate is zero for a row whose first position is 0. dstate may not alias dstate_final.
struct ScanBackwardArgs {
  ScanArgs forward;
  const float* dy = nullptr;
  int64_t dy_ld = 0;
  float* dx = nullptr;
  int64_t dx_ld = 0;
  float* ddt = nullptr;
  int64_t ddt_ld = 0;
  float* dB = nullptr;
  float* dC = nullptr;
  int64_t dbc_ld = 0;
  float* dz = nullptr;
  int64_t dz_ld = 0;
  float* dD = nullptr;
  float* ddt_bias = nullptr;
  float* dA_log = nullptr;
  const float* dstate_final = nullptr;
  float* dstate = nullptr;
};
void selective_scan_backward(const ScanBackwardArgs& a);

// Cross-entropy of logits = h @ w^T (never stored whole: computed kCrossEntropyRows rows at a time
// in `scratch`) against targets [M] (a target < 0 is ignored). Returns the sum of -log softmax at
// each target, in double. When dh is not null: dh (=) grad_scale * dsum/dh and, when dw is not
// null, dw += grad_scale * dsum/dw. scratch holds cross_entropy_scratch_floats(w) floats.
// The loss alone (dh null) takes w in any dtype; gradients need F32.
inline constexpr int64_t kCrossEntropyRows = 256;
int64_t cross_entropy_scratch_floats(const Weight& w);
double lm_head_cross_entropy(const float* h, int64_t h_ld, int64_t M, const Weight& w, const int32_t* targets,
                             float grad_scale, float* dh, int64_t dh_ld, float* dw, float* scratch);

// Kernel selection, for tests and benchmarks. The kernel set is picked once from the CPU's
// features (MAMBACPP_CPU=generic|avx2 caps it); kernel_level() names it ("avx2" or "generic").
// set_kernel_level_for_testing switches to another set this CPU can run (throws otherwise).
std::string_view kernel_level();
void set_kernel_level_for_testing(std::string_view level);
// linear streams the weights once for all rows of x while M is small (decode) and calls sgemm
// from a measured number of rows on; tests and benches may force either path.
enum class LinearPath { Auto, Streaming, Gemm };
void force_linear_path_for_testing(LinearPath path);
bool linear_uses_gemm(int64_t M, DType weight_dtype);

}  // namespace mambacpp::ops
