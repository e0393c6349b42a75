// What one generated sequence keeps besides its recurrent state, shared by the Generator and the
// serving engine so both end sequences and release text by the same rules:
//  - SequenceText: the new text, released only when final (whole UTF-8 characters, never a tail
//    that could still become a stop string) and cut where a stop string first appears;
//  - DistinctIds: the ids the repetition penalty looks at (prompt and generated, each once);
//  - SequenceProgress: both of those plus the sequence's own Rng and its new ids; it samples
//    the next token and decides when the sequence ends (EOS, stop string, max_new_tokens).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/rng.h"
#include "infer/generator.h"  // GenerationOptions, Completion, FinishReason
#include "infer/sampler.h"
#include "text/tokenizer.h"   // StreamDecoder

namespace mambacpp {

class SequenceText {
 public:
  SequenceText(const Tokenizer& tokenizer, std::vector<std::string> stops)
      : decoder_(tokenizer), stops_(std::move(stops)) {}

  // Adds a token's text; true when a stop string completed (the text is then cut before it).
  bool push(int32_t id) { return append(decoder_.push(id)); }
  // Adds what the decoder still holds (the sequence ended); true when that completed a stop string.
  bool finish();
  // The text that became final since the last call.
  std::string_view take_ready();
  std::string take_text() { return std::move(text_); }

 private:
  bool append(std::string_view piece);
  size_t held_back() const;

  StreamDecoder decoder_;
  std::vector<std::string> stops_;
  std::string text_;
  size_t released_ = 0;
  bool finished_ = false;
};

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

class SequenceProgress {
 public:
  // `context`: the ids before the first new one (the prompt), which the repetition penalty also
  // counts. `tokenizer` may be null (no text; the options must then hold no stop strings).
  SequenceProgress(std::span<const int32_t> context, const GenerationOptions& options, int64_t vocab_size,
                   const Tokenizer* tokenizer);

  // The next token from `logits` [vocab_size] (modified in place), drawn with this sequence's Rng.
  int32_t sample(Sampler& sampler, float* logits);
  // Appends `token`; true when it ends the sequence (reason() then says why).
  bool append(int32_t token);
  // The text that became final since the last call (empty without a tokenizer).
  std::string_view take_ready_text() { return text_ ? text_->take_ready() : std::string_view(); }

  const std::vector<int32_t>& ids() const { return result_.ids; }
  FinishReason reason() const { return result_.reason; }
  // The new ids, the whole new text and the reason; call once the sequence ended.
  Completion take_completion();

 private:
  Rng rng_;
  std::optional<int32_t> eos_id_;
  int64_t max_new_tokens_;
  std::optional<DistinctIds> context_;  // only with a repetition penalty
  std::optional<SequenceText> text_;    // only with a tokenizer
  Completion result_;
};

}  // namespace mambacpp
