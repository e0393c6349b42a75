// Timed training steps, each the whole of what the trainer does per optimizer step: zero the
// gradients, model.loss() with gradients (mean over the batch's targets), clip the global
// gradient norm, AdamW, parameters_changed(). Batches are random token ids from a seeded
// generator. A few untimed warm-up steps come first (the training activations and every buffer
// are sized then); peak RSS is read from the kernel after the timed steps. FLOPs and shares of
// the machine's sgemm peak are the caller's (infer/roofline.h), so this layer stays below infer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "model/mamba_model.h"

namespace mambacpp {

struct TrainBenchOptions {
  int batch = 8;
  int64_t length = 512;   // tokens per sequence (each also has a next-token target)
  int warmup_steps = 1;   // untimed
  int steps = 3;          // timed
  double learning_rate = 1e-4;
  double grad_clip = 1.0;  // max global norm (0: no clipping)
  uint64_t seed = 1;       // for the token ids
};

struct TrainBenchResult {
  std::vector<double> step_seconds;  // each timed step
  double first_loss = 0;             // mean loss of the first (warm-up) step
  double last_loss = 0;              // mean loss of the last timed step
  size_t peak_rss_bytes = 0;         // VmHWM after the timed steps (0 if unknown)
  bool peak_rss_reset = false;       // whether the peak was reset at the start (else process-wide)
  size_t activation_bytes = 0;       // model.training_bytes(batch, length)
  size_t state_bytes = 0;            // gradients and both AdamW moments
};

// Runs options.warmup_steps + options.steps steps on `model` (F32 weights), changing its weights.
// Bad options (batch or length < 1, no timed step) are a BadInput naming the value.
TrainBenchResult run_train_bench(MambaModel& model, const TrainBenchOptions& options);

// The high-water mark of this process's resident memory ("VmHWM" of /proc/self/status) in bytes,
// 0 where the kernel does not say. reset_peak_rss() sets it to the current RSS
// (/proc/self/clear_refs), returning false where that is not allowed.
size_t peak_rss_bytes();
bool reset_peak_rss();

}  // namespace mambacpp
