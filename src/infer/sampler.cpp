#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "core/error.h"

namespace mambacpp {

namespace {

using Candidate = Sampler::Candidate;

bool more_probable(const Candidate& a, const Candidate& b) { return a.value > b.value; }

float median_of_three(float a, float b, float c) { return std::max(std::min(a, b), std::min(std::max(a, b), c)); }

}  // namespace

std::optional<SamplingProblem> find_sampling_problem(const SamplingParams& p) {
  // Written as "!(in range)" so that NaN is caught too.
  if (!(std::isfinite(p.temperature) && p.temperature >= 0))
    return SamplingProblem{SamplingField::Temperature, p.temperature, "must be a number >= 0 (0 = greedy)"};
  if (p.top_k < 0) return SamplingProblem{SamplingField::TopK, double(p.top_k), "must be >= 0 (0 = off)"};
  if (!(p.top_p > 0 && p.top_p <= 1))
    return SamplingProblem{SamplingField::TopP, p.top_p, "must be in (0, 1] (1 = off)"};
  if (!(p.min_p >= 0 && p.min_p < 1))
    return SamplingProblem{SamplingField::MinP, p.min_p, "must be in [0, 1) (0 = off)"};
  if (!(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0))
    return SamplingProblem{SamplingField::RepetitionPenalty, p.repetition_penalty, "must be a number > 0 (1 = off)"};
  return std::nullopt;
}

std::string_view sampling_field_name(SamplingField f) {
  switch (f) {
    case SamplingField::Temperature: return "temperature";
    case SamplingField::TopK: return "top_k";
    case SamplingField::TopP: return "top_p";
    case SamplingField::MinP: return "min_p";
    case SamplingField::RepetitionPenalty: return "repetition_penalty";
  }
  return "?";
}

int32_t argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;  // strict: the lowest id wins a tie
  return int32_t(best);
}

Sampler::Sampler(const SamplingParams& params, int64_t vocab_size)
    : params_(params), vocab_size_(vocab_size) {
  if (auto problem = find_sampling_problem(params))
    fail("sampling ", sampling_field_name(problem->field), " = ", problem->value, " is out of range: ", problem->rule);
  if (vocab_size <= 0) fail("sampling needs a vocabulary of at least one token, got ", vocab_size);
  candidates_.resize(size_t(vocab_size));
  scratch_.resize(size_t(vocab_size));
  penalised_.assign(size_t(vocab_size), 0);
  heap_.reserve(size_t(std::min<int64_t>(params.top_k, vocab_size)));
}

void Sampler::apply_repetition_penalty(float* logits, std::span<const int32_t> context) {
  const float penalty = float(params_.repetition_penalty);
  for (int32_t id : context) {
    MAMBACPP_CHECK(id >= 0 && id < vocab_size_);
    if (penalised_[size_t(id)]) continue;
    penalised_[size_t(id)] = 1;
    float& l = logits[id];
    l = l < 0 ? l * penalty : l / penalty;
  }
  for (int32_t id : context) penalised_[size_t(id)] = 0;
}

// The candidates: every id, or with top-k only those whose logit is >= the k-th largest (ties
// with the k-th are kept, as in HF's TopKLogitsWarper). The k-th value comes from one pass with a
// k-element min-heap, so only the survivors are ever written.
void Sampler::gather_candidates(const float* logits) {
  const size_t vocab = size_t(vocab_size_), k = size_t(params_.top_k);
  kept_ = 0;
  if (k == 0 || k >= vocab) {
    for (size_t i = 0; i < vocab; ++i) candidates_[kept_++] = {logits[i], int32_t(i)};
    return;
  }
  heap_.clear();
  for (size_t i = 0; i < vocab; ++i) {
    if (heap_.size() < k) {
      heap_.push_back(logits[i]);
      std::push_heap(heap_.begin(), heap_.end(), std::greater<>());
    } else if (logits[i] > heap_.front()) {
      std::pop_heap(heap_.begin(), heap_.end(), std::greater<>());
      heap_.back() = logits[i];
      std::push_heap(heap_.begin(), heap_.end(), std::greater<>());
    }
  }
  const float kth = heap_.front();
  for (size_t i = 0; i < vocab; ++i)
    if (logits[i] >= kth) candidates_[kept_++] = {logits[i], int32_t(i)};
}

// softmax(logit / temperature) over the candidates. The max is subtracted before dividing, so a
// tiny temperature gives exp(-inf) = 0 rather than inf - inf.
void Sampler::to_probabilities() {
  float max_logit = candidates_[0].value;
  for (size_t i = 1; i < kept_; ++i) max_logit = std::max(max_logit, candidates_[i].value);
  const double temperature = params_.temperature;
  double sum = 0;
  for (size_t i = 0; i < kept_; ++i) {
    candidates_[i].value = std::exp(float(double(candidates_[i].value - max_logit) / temperature));
    sum += candidates_[i].value;
  }
  const float inv = float(1.0 / sum);
  for (size_t i = 0; i < kept_; ++i) candidates_[i].value *= inv;
}

// Keeps tokens whose probability is at least min_p times the largest one. Run before top-p: both
// keep a most-probable head of the distribution and min-p's threshold is relative to the max, so
// the order does not change the result (keep_top_p sums the probabilities from before min-p),
// and top-p then works on fewer candidates.
void Sampler::keep_min_p() {
  if (params_.min_p <= 0) return;
  float max_prob = 0;
  for (size_t i = 0; i < kept_; ++i) max_prob = std::max(max_prob, candidates_[i].value);
  const float threshold = float(params_.min_p) * max_prob;
  Candidate* c = candidates_.data();
  kept_ = size_t(std::partition(c, c + kept_, [threshold](const Candidate& x) { return x.value >= threshold; }) - c);
}

// Moves the candidates in [lo, hi) more probable than `pivot` (or as probable, with `or_equal`)
// to the front of the range, the others after them; returns where the front part ends and its
// total probability in `mass`. Branch-free: each candidate is written to both destinations and
// only the right one advances, since the comparisons are unpredictable.
size_t Sampler::split(size_t lo, size_t hi, float pivot, bool or_equal, double& mass) {
  Candidate* c = candidates_.data();
  Candidate* rest = scratch_.data();
  size_t front = lo, back = 0;
  double sum = 0;
  for (size_t i = lo; i < hi; ++i) {
    const Candidate x = c[i];
    const bool up = or_equal ? x.value >= pivot : x.value > pivot;
    c[front] = x;
    rest[back] = x;
    front += up;
    back += !up;
    sum += double(x.value) * double(up);  // not `up ? x : 0`, which compiles to a branch
  }
  std::copy_n(rest, back, c + front);
  mass = sum;
  return front;
}

// Keeps the smallest set of most probable tokens whose probabilities sum to >= top_p (at least
// one). Quickselect on probability mass (expected linear time): split around a pivot, keep the
// upper part whole if it holds too little mass, else look for the cut inside it; only the last
// few candidates around the cut are sorted.
void Sampler::keep_top_p() {
  if (params_.top_p >= 1.0) return;
  Candidate* c = candidates_.data();
  size_t lo = 0, hi = kept_;  // [0, lo) is kept whole, [hi, kept_) dropped; the cut lies in [lo, hi]
  double mass_before = 0;     // probability in [0, lo)
  while (hi - lo > 32) {
    const float pivot = median_of_three(c[lo].value, c[lo + (hi - lo) / 2].value, c[hi - 1].value);
    double upper = 0;
    size_t mid = split(lo, hi, pivot, false, upper);
    if (mid == lo) mid = split(lo, hi, pivot, true, upper);  // the pivot is the largest value
    if (mid == hi) break;                                     // all equal
    if (mass_before + upper >= params_.top_p) {
      hi = mid;
    } else {
      mass_before += upper;
      lo = mid;
    }
  }
  std::sort(c + lo, c + hi, more_probable);
  double cumulative = mass_before;
  for (size_t i = lo; i < hi; ++i) {
    cumulative += c[i].value;
    if (cumulative >= params_.top_p) {
      kept_ = i + 1;
      return;
    }
  }
  kept_ = hi;  // rounding left the sum just under top_p
}

int32_t Sampler::draw(Rng& rng) const {
  double total = 0;
  for (size_t i = 0; i < kept_; ++i) total += candidates_[i].value;
  const double u = rng.uniform() * total;
  double cumulative = 0;
  for (size_t i = 0; i < kept_; ++i) {
    cumulative += candidates_[i].value;
    if (u < cumulative) return candidates_[i].id;
  }
  return candidates_[kept_ - 1].id;  // u landed on the rounding slack at the very end
}

int32_t Sampler::sample(float* logits, std::span<const int32_t> context, Rng& rng) {
  if (params_.repetition_penalty != 1.0) apply_repetition_penalty(logits, context);
  if (params_.temperature == 0) return argmax(logits, vocab_size_);

  // Temperature does not change the order, so top-k works on the raw logits and the division
  // happens inside the softmax.
  gather_candidates(logits);
  to_probabilities();
  keep_min_p();
  keep_top_p();
  return draw(rng);
}

}  // namespace mambacpp
