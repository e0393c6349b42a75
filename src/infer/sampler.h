// Picks the next token from a row of logits with Hugging Face transformers' semantics and order:
// repetition penalty (RepetitionPenaltyLogitsProcessor), then temperature, top-k, top-p, min-p
// (the logits warpers), then one draw from the renormalised distribution. Temperature 0 is
// greedy: the argmax after the penalty, lowest id on ties.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "core/rng.h"

namespace mambacpp {

struct SamplingParams {
  double temperature = 0.8;          // >= 0; 0 = greedy
  int64_t top_k = 40;                // >= 0; 0 = off
  double top_p = 0.95;               // (0, 1]; 1 = off
  double min_p = 0.05;               // [0, 1); 0 = off
  double repetition_penalty = 1.0;   // > 0; 1 = off
  uint64_t seed = 0;                 // every sequence's generator starts from this seed
};

enum class SamplingField { Temperature, TopK, TopP, MinP, RepetitionPenalty };

struct SamplingProblem {
  SamplingField field;
  double value;
  std::string_view rule;  // "must be >= 0 (0 = greedy)"
};

// The first out-of-range field, if any (NaN and infinities are out of range everywhere).
std::optional<SamplingProblem> find_sampling_problem(const SamplingParams& p);
std::string_view sampling_field_name(SamplingField f);  // "temperature", "top_k", ...

class Sampler {
 public:
  // Throws BadInput naming the field when `params` is out of range.
  Sampler(const SamplingParams& params, int64_t vocab_size);

  const SamplingParams& params() const { return params_; }

  // The next token from `logits` [vocab_size], which the repetition penalty modifies in place.
  // `context`: the ids already in the sequence (prompt and generated; repeats allowed), each
  // penalised once. `rng` is the sequence's own generator; greedy does not draw from it.
  // Allocates nothing.
  int32_t sample(float* logits, std::span<const int32_t> context, Rng& rng);

  struct Candidate {
    float value;  // the logit, then its probability once normalised
    int32_t id;
  };

 private:
  void apply_repetition_penalty(float* logits, std::span<const int32_t> context);
  void gather_candidates(const float* logits);
  void to_probabilities();
  void keep_min_p();
  void keep_top_p();
  size_t split(size_t lo, size_t hi, float pivot, bool or_equal, double& mass);
  int32_t draw(Rng& rng) const;

  SamplingParams params_;
  int64_t vocab_size_;
  std::vector<Candidate> candidates_;  // [0, kept_) are the survivors, in no particular order
  size_t kept_ = 0;
  std::vector<Candidate> scratch_;     // top-p: the lower part of a split
  std::vector<float> heap_;            // top-k: the k largest logits seen so far (a min-heap)
  std::vector<uint8_t> penalised_;     // [vocab_size]: marks ids already penalised this call
};

// argmax of `logits` [n], lowest index on ties.
int32_t argmax(const float* logits, int64_t n);

}  // namespace mambacpp
