// Timed runs of a model the way llama-bench measures a language model: prefill (one forward of
// a p-token prompt, logits for the last position only) and decode (n single-token steps with
// full-vocabulary logits, from an empty state or after a `context`-token prompt). Each test runs
// once untimed (warm-up: the workspace is sized then), then `repetitions` timed times.
#pragma once

#include <cstdint>
#include <vector>

#include "model/mamba_model.h"

namespace mambacpp {

struct ModelBenchOptions {
  int64_t prompt_tokens = 512;  // per sequence; 0 skips prefill
  int64_t decode_tokens = 128;  // steps per sequence; 0 skips decode
  int batch = 1;                // sequences run together (prefill [batch, p], decode step at batch)
  int64_t context = 0;          // tokens of prompt (untimed) before the timed decode steps
  int repetitions = 3;
  uint64_t seed = 1;            // for the random token ids
};

// Tokens per second of each timed repetition (all sequences of the batch together).
struct RateStats {
  std::vector<double> samples;
  double mean = 0;
  double stddev = 0;  // sample standard deviation (0 for one sample)
  double mean_seconds = 0;  // mean time of one repetition
};
RateStats rate_stats(const std::vector<double>& seconds, double tokens_per_run);

struct ModelBenchResult {
  RateStats prefill;  // empty when prompt_tokens == 0
  RateStats decode;   // empty when decode_tokens == 0
  size_t state_bytes = 0;  // recurrent state of the whole batch
};

ModelBenchResult run_model_bench(MambaModel& model, const ModelBenchOptions& options);

}  // namespace mambacpp
