#include "infer/sequence_text.h"

#include <algorithm>

namespace mambacpp {

bool SequenceText::finish() {
  finished_ = true;
  return append(decoder_.flush());
}

std::string_view SequenceText::take_ready() {
  const size_t end = finished_ ? text_.size() : text_.size() - held_back();
  std::string_view ready(text_.data() + released_, end - released_);
  released_ = end;
  return ready;
}

bool SequenceText::append(std::string_view piece) {
  const size_t old_size = text_.size();
  text_ += piece;
  size_t first = std::string::npos;
  for (const std::string& stop : stops_) {
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
size_t SequenceText::held_back() const {
  const size_t unreleased = text_.size() - released_;
  size_t hold = 0;
  for (const std::string& stop : stops_)
    for (size_t k = std::min(stop.size() - 1, unreleased); k > hold; --k)
      if (text_.compare(text_.size() - k, k, stop, 0, k) == 0) {
        hold = k;
        break;
      }
  return hold;
}

SequenceProgress::SequenceProgress(std::span<const int32_t> context, const GenerationOptions& options,
                                   int64_t vocab_size, const Tokenizer* tokenizer)
    : rng_(options.sampling.seed), eos_id_(options.eos_id), max_new_tokens_(options.max_new_tokens) {
  if (options.sampling.repetition_penalty != 1.0) context_.emplace(context, vocab_size);
  if (tokenizer) text_.emplace(*tokenizer, options.stop);
  result_.ids.reserve(size_t(std::clamp<int64_t>(options.max_new_tokens, 0, 4096)));
}

int32_t SequenceProgress::sample(Sampler& sampler, float* logits) {
  return sampler.sample(logits, context_ ? context_->ids() : std::span<const int32_t>{}, rng_);
}

bool SequenceProgress::append(int32_t token) {
  result_.ids.push_back(token);
  if (context_) context_->add(token);
  bool done = false;
  if (eos_id_ && token == *eos_id_) {  // the EOS token contributes no text
    result_.reason = FinishReason::Eos;
    done = true;
  } else if (text_ && text_->push(token)) {
    result_.reason = FinishReason::StopString;
    return true;
  } else if (int64_t(result_.ids.size()) >= max_new_tokens_) {
    result_.reason = FinishReason::Length;
    done = true;
  }
  if (done && text_ && text_->finish()) result_.reason = FinishReason::StopString;
  return done;
}

Completion SequenceProgress::take_completion() {
  if (text_) result_.text = text_->take_text();
  return std::move(result_);
}

}  // namespace mambacpp
