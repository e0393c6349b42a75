// Training: the loss and its gradient with respect to every parameter.
//
// The forward keeps, per layer, the residual stream entering it and the mixer's activations
// (in_proj output, conv output, x_proj output, dt, gated scan output) plus the scan's states at
// every scan_checkpoint_every-th token; RMSNorm outputs are recomputed, and the scan recomputes
// its states chunk by chunk inside selective_scan_backward. The backward walks the layers in
// reverse with one set of gradient buffers, each op adding its parameter gradients in place.
#include <algorithm>
#include <cstring>

#include "model/mamba_model.h"
#include "model/model_impl.h"

namespace mambacpp {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Lays out `tw` for (batch, length) and returns the plan (not yet allocated).
ArenaPlan plan_train_workspace(const MambaConfig& c, int batch, int64_t length, int64_t checkpoint_every,
                               TrainWorkspace& tw) {
  const int64_t T = batch * length, D = c.d_model, E = c.d_inner, N = c.d_state,
                BC = c.dt_rank + 2 * c.d_state;
  const int64_t every = std::min(checkpoint_every, length);
  ArenaPlan plan;
  tw.resid.assign(size_t(c.n_layer + 1), nullptr);
  tw.layer.assign(size_t(c.n_layer), MixerBuffers{});
  for (float*& r : tw.resid) plan.add(&r, T * D);
  for (MixerBuffers& b : tw.layer) {
    plan.add(&b.xz, T * 2 * E);
    plan.add(&b.xc, T * E);
    if (c.falcon()) plan.add(&b.dbc_raw, T * BC);
    plan.add(&b.dbc, T * BC);
    plan.add(&b.dt, T * E);
    plan.add(&b.y, T * E);
    b.y_ld = E;
    plan.add(&b.checkpoints, batch * ceil_div(length, every) * E * N);
    b.checkpoint_every = every;
  }
  plan.add(&tw.normed, T * D);
  plan.add(&tw.d_resid, T * D);
  plan.add(&tw.d_normed, T * D);
  plan.add(&tw.d_xz, T * 2 * E);
  plan.add(&tw.d_xc, T * E);
  plan.add(&tw.d_dbc, T * BC);
  if (c.falcon()) plan.add(&tw.d_dbc_raw, T * BC);
  plan.add(&tw.d_dt, T * E);
  plan.add(&tw.d_y, T * E);
  plan.add(&tw.conv_state, batch * E * (c.d_conv - 1));
  plan.add(&tw.ssm_state, batch * E * N);
  plan.add(&tw.initial_conv, c.n_layer * batch * E * (c.d_conv - 1));
  plan.add(&tw.ids, T);
  return plan;
}

// A parameter's gradient slot in `grads` (null when the config has no such tensor).
float* grad_of(Parameters& grads, ParamRole role, int layer = -1) {
  const ParamSpec* s = grads.table().find(role, layer);
  if (!s) return nullptr;
  return s->kind == ParamKind::Matrix ? grads.matrix_f32(*s) : grads.vector(*s);
}

}  // namespace

void MambaModel::Impl::plan_training(int batch, int64_t length) {
  if (train.buffer.numel() && train.batch == batch && train.length == length &&
      train.checkpoint_every == scan_checkpoint_every)
    return;
  const ArenaPlan plan = plan_train_workspace(config, batch, length, scan_checkpoint_every, train);
  plan.allocate(train.buffer);
  train.batch = batch;
  train.length = length;
  train.checkpoint_every = scan_checkpoint_every;
  train.cross_entropy_scratch.resize(size_t(ops::cross_entropy_scratch_floats(lm_head)));
}

MambaModel::Loss MambaModel::Impl::chunked_loss(const int32_t* tokens, const int32_t* targets, int batch,
                                                int64_t length, const LossOptions& options) {
  const int64_t D = config.d_model;
  // The states run in final_state when the caller wants them (it may be initial_state itself).
  InferenceState local;
  InferenceState& state = options.final_state ? *options.final_state : local;
  if (options.initial_state && options.initial_state != &state) state = *options.initial_state;
  else if (!options.initial_state && options.final_state) state.reset();
  else if (!options.initial_state) local = InferenceState(config, batch);
  const int64_t chunk = std::min(length, chunk_for(batch));
  reserve(batch * chunk);
  ws.cross_entropy_scratch.resize(size_t(ops::cross_entropy_scratch_floats(lm_head)));
  Loss loss;
  for (int64_t t0 = 0; t0 < length; t0 += chunk) {
    const int64_t len = std::min(chunk, length - t0), T = batch * len;
    for (int b = 0; b < batch; ++b) {
      std::copy_n(tokens + b * length + t0, len, ws.ids + b * len);
      std::copy_n(targets + b * length + t0, len, ws.targets + b * len);
      if (options.positions) std::copy_n(options.positions + b * length + t0, len, ws.positions + b * len);
    }
    run_layers(batch, len, state, options.positions ? ws.positions : nullptr);
    ops::rmsnorm(ws.resid, D, T, D, norm_f, float(config.norm_eps), ws.normed, D);
    loss.sum += ops::lm_head_cross_entropy(ws.normed, D, T, lm_head, ws.targets, 0.0f, nullptr, 0, nullptr,
                                           ws.cross_entropy_scratch.data());
  }
  return loss;
}

MambaModel::Loss MambaModel::Impl::loss_and_gradients(const int32_t* tokens, const int32_t* targets, int batch,
                                                      int64_t length, Parameters& grads, float grad_scale,
                                                      const LossOptions& options) {
  plan_training(batch, length);
  const int64_t T = batch * length, D = config.d_model, E = config.d_inner, n_layer = config.n_layer;
  const int64_t conv_floats = batch * E * (config.d_conv - 1), ssm_floats = batch * E * config.d_state;
  const float eps = float(config.norm_eps);
  TrainWorkspace& tw = train;
  std::copy_n(tokens, T, tw.ids);
  // The initial conv states stay in the workspace for the backward: final_state may be the same
  // object as initial_state and overwrite them.
  const InferenceState* initial = options.initial_state;
  for (int l = 0; l < int(n_layer); ++l) {
    float* conv = tw.initial_conv + l * conv_floats;
    if (initial) std::copy_n(initial->conv(l), conv_floats, conv);
    else std::fill_n(conv, conv_floats, 0.0f);
  }

  ops::embedding(tw.ids, T, embedding, tw.resid[0], D);
  for (int l = 0; l < int(n_layer); ++l) {
    const LayerWeights& w = layers[size_t(l)];
    std::memcpy(tw.resid[size_t(l) + 1], tw.resid[size_t(l)], size_t(T * D) * sizeof(float));
    ops::rmsnorm(tw.resid[size_t(l)], D, T, D, w.norm, eps, tw.normed, D);
    MixerBuffers buf = tw.layer[size_t(l)];
    buf.normed = tw.normed;
    buf.resid = tw.resid[size_t(l) + 1];
    buf.positions = options.positions;
    std::copy_n(tw.initial_conv + l * conv_floats, conv_floats, tw.conv_state);
    if (initial) std::copy_n(initial->ssm(l), ssm_floats, tw.ssm_state);
    else std::fill_n(tw.ssm_state, ssm_floats, 0.0f);
    mixer(w, batch, length, buf, tw.conv_state, tw.ssm_state);
    if (options.final_state) {
      std::copy_n(tw.conv_state, conv_floats, options.final_state->conv(l));
      std::copy_n(tw.ssm_state, ssm_floats, options.final_state->ssm(l));
    }
  }

  const float* final_resid = tw.resid[size_t(n_layer)];
  ops::rmsnorm(final_resid, D, T, D, norm_f, eps, tw.normed, D);
  float* d_head = grad_of(grads, config.tie_embeddings ? ParamRole::Embedding : ParamRole::LmHead);
  Loss loss;
  loss.sum = ops::lm_head_cross_entropy(tw.normed, D, T, lm_head, targets, grad_scale, tw.d_normed, D, d_head,
                                        tw.cross_entropy_scratch.data());
  ops::rmsnorm_backward(final_resid, D, T, D, norm_f, eps, tw.d_normed, D, tw.d_resid, D, false,
                        grad_of(grads, ParamRole::NormF));
  // The ops may not read dL/d(final state) from the buffer they write dL/d(initial state) to.
  LossOptions backward_options = options;
  InferenceState d_final_copy;
  if (options.d_final_state && options.d_final_state == options.d_initial_state) {
    d_final_copy = *options.d_final_state;
    backward_options.d_final_state = &d_final_copy;
  }
  for (int l = int(n_layer) - 1; l >= 0; --l) {
    backward_layer(l, grads, backward_options);
    if (options.on_gradients_ready) options.on_gradients_ready(l);
  }
  ops::embedding_backward(tw.ids, T, tw.d_resid, D, D, grad_of(grads, ParamRole::Embedding));
  if (options.on_gradients_ready) options.on_gradients_ready(kRestOfModel);
  return loss;
}

// Layer l's backward: from d_resid = dL/d(residual stream leaving the layer) to dL/d(stream
// entering it), in place, adding the layer's parameter gradients to `grads`.
void MambaModel::Impl::backward_layer(int l, Parameters& grads, const LossOptions& options) {
  TrainWorkspace& tw = train;
  const int batch = tw.batch;
  const int64_t len = tw.length, T = batch * len, D = config.d_model, E = config.d_inner, N = config.d_state,
                R = config.dt_rank, BC = R + 2 * N;
  const LayerWeights& w = layers[size_t(l)];
  MixerBuffers buf = tw.layer[size_t(l)];
  buf.positions = options.positions;

  ops::linear_backward(buf.y, buf.y_ld, T, w.out_proj, tw.d_resid, D, tw.d_y, E, false,
                       grad_of(grads, ParamRole::OutProjWeight, l), grad_of(grads, ParamRole::OutProjBias, l));

  ops::ScanBackwardArgs scan;
  scan.forward = scan_args(w, buf, batch, len, nullptr);
  scan.dy = tw.d_y;
  scan.dy_ld = E;
  scan.dx = tw.d_xc;
  scan.dx_ld = E;
  scan.ddt = tw.d_dt;
  scan.ddt_ld = E;
  scan.dB = tw.d_dbc + R;
  scan.dC = tw.d_dbc + R + N;
  scan.dbc_ld = BC;
  scan.dz = tw.d_xz + E;
  scan.dz_ld = 2 * E;
  scan.dD = grad_of(grads, ParamRole::D, l);
  scan.ddt_bias = grad_of(grads, ParamRole::DtBias, l);
  scan.dA_log = grad_of(grads, ParamRole::ALog, l);
  scan.dstate_final = options.d_final_state ? options.d_final_state->ssm(l) : nullptr;
  scan.dstate = options.d_initial_state ? options.d_initial_state->ssm(l) : nullptr;
  ops::selective_scan_backward(scan);

  ops::linear_backward(buf.dbc, BC, T, w.dt_proj, tw.d_dt, E, tw.d_dbc, BC, false,
                       grad_of(grads, ParamRole::DtProjWeight, l), nullptr);
  const float* d_dbc_in = tw.d_dbc;
  if (config.falcon()) {
    for (const auto& [first, width] : falcon_norm_spans(config))
      ops::rmsnorm_backward(buf.dbc_raw + first, BC, T, width, nullptr, float(config.mixer_rms_eps),
                            tw.d_dbc + first, BC, tw.d_dbc_raw + first, BC, false, nullptr);
    d_dbc_in = tw.d_dbc_raw;
  }
  ops::linear_backward(buf.xc, E, T, w.x_proj, d_dbc_in, BC, tw.d_xc, E, true,
                       grad_of(grads, ParamRole::XProjWeight, l), nullptr);

  ops::ConvBackwardArgs conv;
  conv.forward = conv_args(w, buf, batch, len, tw.initial_conv + l * batch * E * (config.d_conv - 1));
  conv.dout = tw.d_xc;
  conv.dout_ld = E;
  conv.dx = tw.d_xz;
  conv.dx_ld = 2 * E;
  conv.dweight = grad_of(grads, ParamRole::ConvWeight, l);
  conv.dbias = grad_of(grads, ParamRole::ConvBias, l);
  conv.dstate_final = options.d_final_state ? options.d_final_state->conv(l) : nullptr;
  conv.dstate = options.d_initial_state ? options.d_initial_state->conv(l) : nullptr;
  ops::causal_conv1d_silu_backward(conv);

  const float eps = float(config.norm_eps);
  ops::rmsnorm(tw.resid[size_t(l)], D, T, D, w.norm, eps, tw.normed, D);  // recomputed, not kept
  ops::linear_backward(tw.normed, D, T, w.in_proj, tw.d_xz, 2 * E, tw.d_normed, D, false,
                       grad_of(grads, ParamRole::InProjWeight, l), grad_of(grads, ParamRole::InProjBias, l));
  ops::rmsnorm_backward(tw.resid[size_t(l)], D, T, D, w.norm, eps, tw.d_normed, D, tw.d_resid, D, true,
                        grad_of(grads, ParamRole::Norm, l));
}

// ---------------------------------------------------------------------------------------------
// The public side

namespace {

// Positions >= 0, each 0 (a new document) or the previous one's plus one; states of the batch's
// size and the model's shape (the gradient ones only matter, and are checked, with grads).
void check_loss_options(const MambaConfig& c, const LossOptions& options, int batch, int64_t length, bool grads) {
  struct Named {
    const char* name;
    const InferenceState* state;
    bool used;
  };
  const Named states[] = {{"initial_state", options.initial_state, true},
                          {"final_state", options.final_state, true},
                          {"d_final_state", options.d_final_state, grads},
                          {"d_initial_state", options.d_initial_state, grads}};
  const size_t expected_bytes = size_t(batch * c.n_layer * c.d_inner * (c.d_conv - 1 + c.d_state)) * sizeof(float);
  for (const auto& [name, state, used] : states) {
    if (!state || !used) continue;
    if (state->batch() != batch)
      fail("LossOptions.", name, " holds ", state->batch(), " sequences, but the batch has ", batch);
    if (state->bytes() != expected_bytes)
      fail("LossOptions.", name, " was made for another model shape (", state->bytes(), " bytes, this model's take ",
           expected_bytes, ")");
  }
  if (!options.positions) return;
  for (int b = 0; b < batch; ++b)
    for (int64_t t = 0; t < length; ++t) {
      const int32_t p = options.positions[b * length + t];
      if (p < 0) fail("positions[", b, ", ", t, "] is ", p, ": positions must be >= 0");
      if (t == 0 || p == 0) continue;
      const int32_t before = options.positions[b * length + t - 1];
      if (p != before + 1)
        fail("positions[", b, ", ", t, "] is ", p, ": a position must be 0 (a new document) or one more than the ",
             "one before it (positions[", b, ", ", t - 1, "] is ", before, ")");
    }
}

}  // namespace

MambaModel::Loss MambaModel::loss(const int32_t* tokens, const int32_t* targets, int batch, int64_t length,
                                  Parameters* grads, float grad_scale, const LossOptions& options) {
  const MambaConfig& c = impl_->config;
  if (batch < 1 || length < 1) fail("a training batch needs at least one sequence of one token, got ", batch, " x ", length);
  impl_->check_tokens(tokens, batch, length);
  Loss loss;
  for (int64_t i = 0; i < batch * length; ++i) {
    if (targets[i] >= c.vocab_size)
      fail("target id ", targets[i], " (sequence ", i / length, ", position ", i % length,
           ") is outside the vocabulary of ", c.vocab_size, " tokens");
    loss.count += targets[i] >= 0;
  }
  check_loss_options(c, options, batch, length, grads != nullptr);
  if (!grads) {
    loss.sum = impl_->chunked_loss(tokens, targets, batch, length, options).sum;
    return loss;
  }
  if (weight_type() != WeightType::F32)
    fail("training needs the weights in F32 in memory, this model holds them in ", weight_type_name(weight_type()));
  MAMBACPP_CHECK(grads->weight_type() == WeightType::F32 &&
                 grads->table().region_elements(ParamKind::Matrix) ==
                     impl_->params.table().region_elements(ParamKind::Matrix) &&
                 grads->table().region_elements(ParamKind::Vector) ==
                     impl_->params.table().region_elements(ParamKind::Vector));
  loss.sum = impl_->loss_and_gradients(tokens, targets, batch, length, *grads, grad_scale, options).sum;
  return loss;
}

void MambaModel::set_scan_checkpoint_every(int64_t tokens) {
  if (tokens < 1) fail("scan checkpoint interval must be at least 1 token, got ", tokens);
  impl_->scan_checkpoint_every = tokens;
}

size_t MambaModel::training_bytes(int batch, int64_t length) const {
  TrainWorkspace layout;
  const ArenaPlan plan = plan_train_workspace(impl_->config, batch, length, impl_->scan_checkpoint_every, layout);
  return size_t(plan.floats()) * sizeof(float) +
         size_t(ops::cross_entropy_scratch_floats(impl_->lm_head)) * sizeof(float);
}

Parameters& MambaModel::parameters() { return impl_->params; }
const Parameters& MambaModel::parameters() const { return impl_->params; }
void MambaModel::parameters_changed() { impl_->bind(); }

}  // namespace mambacpp
