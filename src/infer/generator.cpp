#include "infer/generator.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/error.h"
#include "model/mamba_model.h"
#include "text/tokenizer.h"

namespace mambacpp {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The new text of one sequence. It is cut where a stop string first appears, and released to
// the caller only when final: complete UTF-8 characters (StreamDecoder) that cannot turn out to
// be the beginning of a stop string.
class SequenceText {
 public:
  SequenceText(const Tokenizer& tokenizer, const std::vector<std::string>& stops)
      : decoder_(tokenizer), stops_(&stops) {}

  // Adds a token's text; true when a stop string completed (the text is then cut before it).
  bool push(int32_t id) { return append(decoder_.push(id)); }
  // Adds what the decoder still holds (the sequence ended); true when that completed a stop string.
  bool finish() {
    finished_ = true;
    return append(decoder_.flush());
  }
  // The text that became final since the last call.
  std::string_view take_ready() {
    const size_t end = finished_ ? text_.size() : text_.size() - held_back();
    std::string_view ready(text_.data() + released_, end - released_);
    released_ = end;
    return ready;
  }
  std::string take_text() { return std::move(text_); }

 private:
  bool append(std::string_view piece) {
    const size_t old_size = text_.size();
    text_ += piece;
    size_t first = std::string::npos;
    for (const std::string& stop : *stops_) {
      // A new occurrence must end inside the piece just added.
      const size_t from = old_size >= stop.size() - 1 ? old_size - (stop.size() - 1) : 0;
      first = std::min(first, text_.find(stop, from));
    }
    if (first == std::string::npos) return false;
    text_.resize(std::max(first, released_));
    finished_ = true;
    return true;
  }

  // Length of the longest tail of the unreleased text that is a proper prefix of a stop string.
  size_t held_back() const {
    const size_t unreleased = text_.size() - released_;
    size_t hold = 0;
    for (const std::string& stop : *stops_)
      for (size_t k = std::min(stop.size() - 1, unreleased); k > hold; --k)
        if (text_.compare(text_.size() - k, k, stop, 0, k) == 0) {
          hold = k;
          break;
        }
    return hold;
  }

  StreamDecoder decoder_;
  const std::vector<std::string>* stops_;
  std::string text_;
  size_t released_ = 0;
  bool finished_ = false;
};

// The distinct ids a sequence holds so far (prompt and generated), for the repetition penalty.
class DistinctIds {
 public:
  DistinctIds(std::span<const int32_t> prompt, int64_t vocab_size) : present_(size_t(vocab_size), 0) {
    for (int32_t id : prompt) add(id);
  }
  void add(int32_t id) {
    if (present_[size_t(id)]) return;
    present_[size_t(id)] = 1;
    ids_.push_back(id);
  }
  std::span<const int32_t> ids() const { return ids_; }

 private:
  std::vector<uint8_t> present_;
  std::vector<int32_t> ids_;
};

struct Sequence {
  Rng rng;
  std::optional<DistinctIds> context;  // only with a repetition penalty
  std::optional<SequenceText> text;    // only with a tokenizer
  Completion result;
};

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
  std::vector<Sequence> seqs(batch);
  for (size_t b = 0; b < batch; ++b) {
    seqs[b].rng.reseed(options.sampling.seed);
    if (options.sampling.repetition_penalty != 1.0) seqs[b].context.emplace(prompts[b], vocab);
    if (tokenizer_) seqs[b].text.emplace(*tokenizer_, options.stop);
    seqs[b].result.ids.reserve(size_t(std::min<int64_t>(options.max_new_tokens, 4096)));
  }

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

  // Appends `token` to sequence b; true when that ends it.
  auto advance = [&](size_t b, int32_t token) {
    Sequence& seq = seqs[b];
    seq.result.ids.push_back(token);
    if (seq.context) seq.context->add(token);
    bool done = false;
    if (options.eos_id && token == *options.eos_id) {
      seq.result.reason = FinishReason::Eos;
      done = true;
    } else if (seq.text && seq.text->push(token)) {
      seq.result.reason = FinishReason::StopString;
      return true;
    } else if (int64_t(seq.result.ids.size()) >= options.max_new_tokens) {
      seq.result.reason = FinishReason::Length;
      done = true;
    }
    if (done && seq.text && seq.text->finish()) seq.result.reason = FinishReason::StopString;
    return done;
  };

  const auto decode_start = Clock::now();
  while (!slot_seq.empty()) {
    size_t kept = 0;
    for (size_t s = 0; s < slot_seq.size(); ++s) {
      const size_t b = size_t(slot_seq[s]);
      Sequence& seq = seqs[b];
      const std::span<const int32_t> context = seq.context ? seq.context->ids() : std::span<const int32_t>{};
      const int32_t token = sampler.sample(logits.data() + s * size_t(vocab), context, seq.rng);
      const bool done = advance(b, token);
      if (seq.text && on_text) {
        const std::string_view ready = seq.text->take_ready();
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
    stats_.new_tokens += int64_t(seqs[b].result.ids.size());
    if (seqs[b].text) seqs[b].result.text = seqs[b].text->take_text();
    results[b] = std::move(seqs[b].result);
  }
  return results;
}

}  // namespace mambacpp
