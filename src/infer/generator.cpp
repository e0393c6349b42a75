#include "infer/generator.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/error.h"
#include "infer/sequence_text.h"
#include "model/mamba_model.h"

namespace mambacpp {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Moves the sequences in `kept_slots` (ascending) to slots 0, 1, ... of a smaller state.
InferenceState compact(const MambaModel& model, const InferenceState& state, std::span<const int> kept_slots) {
  InferenceState smaller = model.new_state(int(kept_slots.size()));
  for (size_t to = 0; to < kept_slots.size(); ++to) smaller.copy_slot(state, kept_slots[to], int(to));
  return smaller;
}

// Prefills each prompt alone from an empty state into its slot of `batch_state`, leaving its
// last-position logits in row b of `logits` [B, V].
void prefill_each(MambaModel& model, const std::vector<std::vector<int32_t>>& prompts, InferenceState& batch_state,
                  float* logits) {
  const int64_t vocab = model.config().vocab_size;
  InferenceState solo = model.new_state(1);
  for (size_t b = 0; b < prompts.size(); ++b) {
    solo.reset();
    model.forward(prompts[b].data(), 1, int64_t(prompts[b].size()), solo, LogitsMode::Last, logits + b * vocab);
    batch_state.copy_slot(solo, 0, int(b));
  }
}

}  // namespace

std::string_view finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Length: return "length";
    case FinishReason::Eos: return "eos";
    case FinishReason::StopString: return "stop";
  }
  return "?";
}

double GenerationStats::prefill_tokens_per_second() const {
  return prefill_seconds > 0 ? double(prompt_tokens) / prefill_seconds : 0.0;
}

double GenerationStats::decode_tokens_per_second() const {
  return decode_seconds > 0 ? double(new_tokens) / decode_seconds : 0.0;
}

std::string GenerationStats::summary() const {
  char line[256];
  std::snprintf(line, sizeof line, "prefill: %lld tokens in %.3f s (%.1f tok/s); decode: %lld tokens in %.3f s (%.1f tok/s)",
                static_cast<long long>(prompt_tokens), prefill_seconds, prefill_tokens_per_second(),
                static_cast<long long>(new_tokens), decode_seconds, decode_tokens_per_second());
  return line;
}

void check_token_ids(std::span<const int32_t> ids, int64_t vocab_size, std::string_view what) {
  if (ids.empty()) fail(what, " is empty: the model needs at least one token to start from");
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab_size)
      fail("id ", ids[i], " at position ", i + 1, " of ", what, " is outside the vocabulary (vocab_size ", vocab_size,
           ")");
}

Generator::Generator(MambaModel& model, const Tokenizer* tokenizer) : model_(model), tokenizer_(tokenizer) {}

std::vector<Completion> Generator::generate(const std::vector<std::vector<int32_t>>& prompts,
                                            const GenerationOptions& options, const TextCallback& on_text) {
  const int64_t vocab = model_.config().vocab_size;
  for (size_t i = 0; i < prompts.size(); ++i) check_token_ids(prompts[i], vocab, cat("prompt ", i + 1));
  if (options.max_new_tokens < 0) fail("max_new_tokens = ", options.max_new_tokens, " is out of range: must be >= 0");
  if (!options.stop.empty() && !tokenizer_) fail("stop strings need a tokenizer (the text is what they match)");
  for (const std::string& stop : options.stop)
    if (stop.empty()) fail("a stop string must not be empty");
  Sampler sampler(options.sampling, vocab);

  stats_ = {};
  const size_t batch = prompts.size();
  if (batch == 0 || options.max_new_tokens == 0) return std::vector<Completion>(batch);
  std::vector<SequenceProgress> seqs;
  seqs.reserve(batch);
  for (size_t b = 0; b < batch; ++b) seqs.emplace_back(prompts[b], options, vocab, tokenizer_);

  std::vector<float> logits(batch * size_t(vocab));
  InferenceState state = model_.new_state(int(batch));
  const auto prefill_start = Clock::now();
  prefill_each(model_, prompts, state, logits.data());
  stats_.prefill_seconds = seconds_since(prefill_start);
  for (const auto& p : prompts) stats_.prompt_tokens += int64_t(p.size());

  // Slot s of `state` (and row s of `logits`) holds sequence slot_seq[s].
  std::vector<int> slot_seq(batch), kept_slots(batch);
  for (size_t b = 0; b < batch; ++b) slot_seq[b] = int(b);
  std::vector<int32_t> next_tokens(batch);

  const auto decode_start = Clock::now();
  while (!slot_seq.empty()) {
    size_t kept = 0;
    for (size_t s = 0; s < slot_seq.size(); ++s) {
      const size_t b = size_t(slot_seq[s]);
      SequenceProgress& seq = seqs[b];
      const int32_t token = seq.sample(sampler, logits.data() + s * size_t(vocab));
      const bool done = seq.append(token);
      if (on_text) {
        const std::string_view ready = seq.take_ready_text();
        if (!ready.empty()) on_text(b, ready);
      }
      if (done) continue;
      next_tokens[kept] = token;
      kept_slots[kept++] = int(s);
    }
    if (kept == 0) break;
    if (kept < slot_seq.size()) {
      state = compact(model_, state, std::span<const int>(kept_slots.data(), kept));
      for (size_t s = 0; s < kept; ++s) slot_seq[s] = slot_seq[size_t(kept_slots[s])];
      slot_seq.resize(kept);
    }
    model_.step(next_tokens.data(), state, logits.data());
  }
  stats_.decode_seconds = seconds_since(decode_start);

  std::vector<Completion> results(batch);
  for (size_t b = 0; b < batch; ++b) {
    stats_.new_tokens += int64_t(seqs[b].ids().size());
    results[b] = seqs[b].take_completion();
  }
  return results;
}

}  // namespace mambacpp
