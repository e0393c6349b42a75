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

// Packed documents (ConvArgs::positions): the first tap k of a token at `position` that reads
// inside its document, max(0, W-1 - position); and the first entry of sequence b's final conv state
// that holds an input of its last document (entries before it are left zero).
int conv_first_tap(int32_t position, int width);
int conv_first_kept_state(const ConvArgs& a, int b);

// Backward twins (ops.h, "Backward"); F32 weights only. lm_head_cross_entropy computes one row of
// logits at a time and ignores `scratch`; conv's channel form accumulates dweight and dbias of
// channels [e0, e1) of sequence b.
void embedding_backward(const int32_t* ids, int64_t M, const float* dout, int64_t dout_ld, int64_t D, float* dtable);
void rmsnorm_backward(const float* x, int64_t x_ld, int64_t M, int64_t D, const float* weight, float eps,
                      const float* dy, int64_t dy_ld, float* dx, int64_t dx_ld, bool accumulate_dx, float* dweight);
void linear_backward(const float* x, int64_t x_ld, int64_t M, const Weight& w, const float* dy, int64_t dy_ld,
                     float* dx, int64_t dx_ld, bool accumulate_dx, float* dw, float* dbias);
void causal_conv1d_silu_backward(const ConvBackwardArgs& a);
void causal_conv1d_silu_backward_channels(const ConvBackwardArgs& a, int b, int64_t e0, int64_t e1);
// The conv backward's state part for channel e of sequence b, once dx of the sequence is written:
// dstate (=, when not null) from the taps of tokens 0 .. W-2 that read the initial state, with
// dpre[t * stride] = dL/d(pre-activation) of token t; then dstate_final's entries (when not null)
// added to dx or dstate, wherever the final state took them from.
void conv_state_backward_channel(const ConvBackwardArgs& g, int b, int64_t e, const float* dpre, int64_t stride);
double lm_head_cross_entropy(const float* h, int64_t h_ld, int64_t M, const Weight& w, const int32_t* targets,
                             float grad_scale, float* dh, int64_t dh_ld, float* dw, float* scratch);

// Selective scan training (ops.h, ScanArgs::checkpoints and selective_scan_backward).
// scan_checkpoint: the saved state before token k * checkpoint_every of sequence b, [E, N].
// selective_scan_backward runs each channel over the whole sequence at once from checkpoint 0 (the
// other checkpoints are not read): the truth the chunked kernels are compared against.
// selective_scan_backward_channels: channels [e0, e1) of sequence b, chunk by chunk from the
// checkpoints, last chunk first (the generic kernel, and fast kernels' leftover channels). It keeps
// the sums over channels and over sequences apart for the caller to add up in a fixed order: it adds
// the tokens' dB and dC over its channels to dbc [length, 2N] (dB then dC of each token; the caller
// zeroes it) and overwrites its channels' entries of dparams [E * N + 2E], this sequence's share of
// dA_log [E, N], then dD [E], then ddt_bias [E].
float* scan_checkpoint(const ScanArgs& a, int b, int64_t k);
// A backward over zero tokens: dstate (when not null) = dstate_final, or zero.
void pass_state_gradient(const ScanBackwardArgs& g);
void selective_scan_backward(const ScanBackwardArgs& a);
void selective_scan_backward_channels(const ScanBackwardArgs& a, int b, int64_t e0, int64_t e1, float* dbc,
                                      float* dparams);

}  // namespace mambacpp::ops::reference
