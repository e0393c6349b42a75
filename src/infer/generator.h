// Generates continuations of B >= 1 prompts of any lengths as one batch. Each prompt is
// prefilled alone (batch 1, its own length, from an empty state) and its final state copied into
// its slot of the batch state, so no padding ever enters a conv or scan state; then every
// unfinished sequence advances together through MambaModel::step. Finished sequences leave the
// batch (the state is compacted), so a sequence's tokens do not depend on its neighbours.
//
// Seeding: every sequence draws from its own Rng seeded with SamplingParams::seed, so a prompt
// gives the same tokens alone or at any place in a batch (and two equal prompts in one batch
// give equal completions).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "infer/sampler.h"

namespace mambacpp {

class MambaModel;
class Tokenizer;

struct GenerationOptions {
  SamplingParams sampling;
  int64_t max_new_tokens = 128;    // >= 0
  std::vector<std::string> stop;   // stop strings (need a tokenizer); non-empty
  std::optional<int32_t> eos_id;   // generating it ends the sequence
};

enum class FinishReason { Length, Eos, StopString };
std::string_view finish_reason_name(FinishReason r);  // "length", "eos", "stop"

struct Completion {
  // The new ids, including an EOS that ended the sequence and the token that completed a stop
  // string.
  std::vector<int32_t> ids;
  // The new text (empty without a tokenizer): the EOS token contributes none; a stop string and
  // everything after it are cut off.
  std::string text;
  FinishReason reason = FinishReason::Length;
};

struct GenerationStats {
  int64_t prompt_tokens = 0;   // prefilled, all sequences
  int64_t new_tokens = 0;      // generated, all sequences
  double prefill_seconds = 0;
  double decode_seconds = 0;   // sampling and recurrent steps
  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;
  std::string summary() const;  // one line: "prefill: 11 tokens, 0.002 s, 5500.0 tok/s; decode: ..."
};

// Receives text of sequence `index` as soon as it is final: never half a UTF-8 character and
// never a piece that could still turn out to begin a stop string.
using TextCallback = std::function<void(size_t index, std::string_view text)>;

// Throws BadInput when `ids` is empty ("the model needs at least one token") or holds an id outside
// [0, vocab_size), naming `what` ("prompt 2", "--ids"), the id and its position (0-based).
void check_token_ids(std::span<const int32_t> ids, int64_t vocab_size, std::string_view what);

class Generator {
 public:
  // `tokenizer` may be null: then no text is produced and stop strings are refused.
  Generator(MambaModel& model, const Tokenizer* tokenizer);

  // One Completion per prompt, in order. Prompts are checked with check_token_ids first.
  std::vector<Completion> generate(const std::vector<std::vector<int32_t>>& prompts,
                                   const GenerationOptions& options, const TextCallback& on_text = {});
  const GenerationStats& stats() const { return stats_; }  // of the last generate()

 private:
  MambaModel& model_;
  const Tokenizer* tokenizer_;
  GenerationStats stats_;
};

}  // namespace mambacpp
