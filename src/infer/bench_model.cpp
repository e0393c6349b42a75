#include "infer/bench_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "core/rng.h"

namespace mambacpp {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::vector<int32_t> random_tokens(int64_t count, int64_t vocab, Rng& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(count));
  for (auto& id : ids) id = int32_t(rng.below(uint64_t(vocab)));
  return ids;
}

// Runs `warm_up`, then `run` `repetitions` times; returns the seconds of each run.
template <class WarmUp, class Run>
std::vector<double> time_repeated(int repetitions, WarmUp&& warm_up, Run&& run) {
  warm_up();
  std::vector<double> seconds;
  for (int r = 0; r < repetitions; ++r) {
    const auto start = Clock::now();
    run();
    seconds.push_back(seconds_since(start));
  }
  return seconds;
}

}  // namespace

RateStats rate_stats(const std::vector<double>& seconds, double tokens_per_run) {
  RateStats s;
  if (seconds.empty()) return s;
  for (double t : seconds) s.samples.push_back(tokens_per_run / t);
  const double n = double(s.samples.size());
  s.mean = std::accumulate(s.samples.begin(), s.samples.end(), 0.0) / n;
  s.mean_seconds = std::accumulate(seconds.begin(), seconds.end(), 0.0) / n;
  if (s.samples.size() > 1) {
    double squares = 0;
    for (double x : s.samples) squares += (x - s.mean) * (x - s.mean);
    s.stddev = std::sqrt(squares / (n - 1));
  }
  return s;
}

ModelBenchResult run_model_bench(MambaModel& model, const ModelBenchOptions& o) {
  MAMBACPP_CHECK(o.batch >= 1 && o.repetitions >= 1 && o.prompt_tokens >= 0 && o.decode_tokens >= 0 &&
                 o.context >= 0);
  const int64_t vocab = model.config().vocab_size;
  const int64_t b = o.batch;
  Rng rng(o.seed);
  ModelBenchResult result;
  InferenceState state = model.new_state(o.batch);
  result.state_bytes = state.bytes();
  std::vector<float> logits(size_t(b * vocab));

  if (o.prompt_tokens > 0) {
    const std::vector<int32_t> prompt = random_tokens(b * o.prompt_tokens, vocab, rng);
    const auto prefill = [&] {
      state.reset();
      model.forward(prompt.data(), o.batch, o.prompt_tokens, state, LogitsMode::Last, logits.data());
    };
    const auto seconds = time_repeated(o.repetitions, prefill, prefill);
    result.prefill = rate_stats(seconds, double(b * o.prompt_tokens));
  }

  if (o.decode_tokens > 0) {
    InferenceState start = model.new_state(o.batch);
    if (o.context > 0) {
      const std::vector<int32_t> context = random_tokens(b * o.context, vocab, rng);
      model.forward(context.data(), o.batch, o.context, start, LogitsMode::None, nullptr);
    }
    const std::vector<int32_t> steps = random_tokens(b * o.decode_tokens, vocab, rng);
    const auto decode = [&](int64_t n_steps) {
      state = start;
      for (int64_t i = 0; i < n_steps; ++i) model.step(steps.data() + i * b, state, logits.data());
    };
    // A few steps warm up (the step workspace is sized by the first), as llama-bench's one token.
    const auto seconds = time_repeated(
        o.repetitions, [&] { decode(std::min<int64_t>(o.decode_tokens, 4)); }, [&] { decode(o.decode_tokens); });
    result.decode = rate_stats(seconds, double(b * o.decode_tokens));
  }
  return result;
}

}  // namespace mambacpp
