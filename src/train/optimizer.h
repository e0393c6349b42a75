// AdamW over the flat parameter buffers (model/parameters.h), the learning-rate schedule and
// gradient clipping. Parameters, gradients and both moments share one layout, so a step is one
// fused pass per region; each tensor's weight decay comes from its parameter group.
#pragma once

#include <cstdint>
#include <vector>

#include "model/parameters.h"

namespace mambacpp {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  // mamba_ssm's users' groups: no decay on 1-D tensors (norms, biases, D, dt bias, conv bias) nor
  // on A_log. false: decay on every tensor (torch.optim.AdamW over model.parameters()).
  bool exclude_vectors_and_a_log = true;
};

class AdamW {
 public:
  AdamW(const MambaConfig& config, const AdamWOptions& options);

  // One step at learning rate lr (PyTorch's AdamW: decoupled decay p -= lr * wd * p, then the
  // bias-corrected Adam update). params and grads are F32 Parameters of the optimizer's config.
  void step(Parameters& params, const Parameters& grads, double lr);

  int64_t steps_taken() const { return step_; }
  // The moments, for checkpoints (same layout as the parameters), and the step count.
  Parameters& first_moment() { return m_; }
  Parameters& second_moment() { return v_; }
  const Parameters& first_moment() const { return m_; }
  const Parameters& second_moment() const { return v_; }
  void set_steps_taken(int64_t steps) { step_ = steps; }
  const AdamWOptions& options() const { return options_; }

 private:
  AdamWOptions options_;
  Parameters m_, v_;
  std::vector<float> decay_;  // per table spec: the weight decay applied to it
  int64_t step_ = 0;
};

// Linear warmup from 0 to max_lr over `warmup` steps, then cosine decay to min_lr at
// `total_steps`; min_lr after. step counts from 0 (the first optimizer step).
double learning_rate(int64_t step, int64_t warmup, int64_t total_steps, double max_lr, double min_lr);

// The L2 norm of all gradients (in double); when max_norm > 0 and the norm exceeds it, scales
// the gradients by max_norm / norm, as torch.nn.utils.clip_grad_norm_. Returns the norm before
// clipping (NaN or infinity when a gradient is not finite; then nothing is scaled).
double clip_grad_norm(Parameters& grads, double max_norm);

}  // namespace mambacpp
