#include "train/train_bench.h"

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>

#include "core/error.h"
#include "core/rng.h"
#include "train/optimizer.h"

namespace mambacpp {

size_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) {
      std::istringstream fields(line.substr(6));
      size_t kib = 0;
      fields >> kib;
      return kib * 1024;
    }
  return 0;
}

bool reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";  // 5: reset the peak RSS to the current RSS (Linux >= 4.0)
  clear.flush();
  return bool(clear);
}

namespace {

// batch rows of length + 1 random ids: tokens are the first `length` of each row, targets the
// last `length` (the next token of each position).
struct Batch {
  std::vector<int32_t> tokens, targets;
};

Batch random_batch(Rng& rng, int64_t vocab, int batch, int64_t length) {
  Batch b;
  b.tokens.resize(size_t(batch * length));
  b.targets.resize(size_t(batch * length));
  for (int64_t r = 0; r < batch; ++r) {
    int32_t previous = int32_t(rng.below(uint64_t(vocab)));
    for (int64_t t = 0; t < length; ++t) {
      const int32_t next = int32_t(rng.below(uint64_t(vocab)));
      b.tokens[size_t(r * length + t)] = previous;
      b.targets[size_t(r * length + t)] = next;
      previous = next;
    }
  }
  return b;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

TrainBenchResult run_train_bench(MambaModel& model, const TrainBenchOptions& o) {
  if (o.batch < 1) fail("train bench: batch ", o.batch, " must be at least 1");
  if (o.length < 1) fail("train bench: sequence length ", o.length, " must be at least 1");
  if (o.steps < 1) fail("train bench: ", o.steps, " timed steps: need at least one");
  if (o.warmup_steps < 0) fail("train bench: warm-up steps ", o.warmup_steps, " must not be negative");
  const MambaConfig& config = model.config();
  TrainBenchResult result;
  result.peak_rss_reset = reset_peak_rss();

  Parameters grads(config, WeightType::F32);
  AdamW optimizer(config, AdamWOptions{});
  result.state_bytes = grads.bytes() + optimizer.first_moment().bytes() + optimizer.second_moment().bytes();
  result.activation_bytes = model.training_bytes(o.batch, o.length);

  Rng rng(o.seed);
  // Every target is a real token, so the count is batch x length and the mean's scale is known.
  const float mean_scale = float(1.0 / double(int64_t(o.batch) * o.length));
  for (int step = 0; step < o.warmup_steps + o.steps; ++step) {
    const Batch batch = random_batch(rng, config.vocab_size, o.batch, o.length);
    const auto start = std::chrono::steady_clock::now();
    grads.zero();
    const MambaModel::Loss loss =
        model.loss(batch.tokens.data(), batch.targets.data(), o.batch, o.length, &grads, mean_scale);
    clip_grad_norm(grads, o.grad_clip);
    optimizer.step(model.parameters(), grads, o.learning_rate);
    model.parameters_changed();
    const double seconds = seconds_since(start);
    if (step == 0) result.first_loss = loss.mean();
    if (step >= o.warmup_steps) result.step_seconds.push_back(seconds);
    result.last_loss = loss.mean();
  }
  result.peak_rss_bytes = peak_rss_bytes();
  return result;
}

}  // namespace mambacpp
