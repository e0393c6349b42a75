// The sampler on hand-made logits: greedy, the repetition penalty's HF semantics, the exact sets
// top-k / top-p / min-p keep (and their order), seeding, and the drawn frequencies against the
// distribution worked out here by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <vector>

#include "core/error.h"
#include "infer/sampler.h"

namespace mambacpp {
namespace {

SamplingParams plain(double temperature = 1.0) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0;
  p.min_p = 0.0;
  p.repetition_penalty = 1.0;
  return p;
}

// Logits whose softmax at temperature 1 is exactly `probs` (up to rounding).
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (double p : probs) logits.push_back(float(std::log(p)));
  return logits;
}

// Draw counts per id over `draws` samples (a fresh copy of the logits each time).
std::map<int32_t, int> histogram(const SamplingParams& params, const std::vector<float>& logits, int draws,
                                 uint64_t seed = 7) {
  Sampler sampler(params, int64_t(logits.size()));
  Rng rng(seed);
  std::map<int32_t, int> counts;
  for (int i = 0; i < draws; ++i) {
    std::vector<float> row = logits;
    ++counts[sampler.sample(row.data(), {}, rng)];
  }
  return counts;
}

std::set<int32_t> support(const std::map<int32_t, int>& counts) {
  std::set<int32_t> ids;
  for (const auto& [id, n] : counts) ids.insert(id);
  return ids;
}

// Each count within 5 standard deviations of draws * p (binomial).
void expect_frequencies(const std::map<int32_t, int>& counts, const std::vector<double>& expected, int draws) {
  for (size_t id = 0; id < expected.size(); ++id) {
    const double mean = draws * expected[id];
    const double sigma = std::sqrt(draws * expected[id] * (1 - expected[id]));
    const auto it = counts.find(int32_t(id));
    const int got = it == counts.end() ? 0 : it->second;
    EXPECT_NEAR(got, mean, 5 * sigma + 1e-9) << "id " << id << ": expected p = " << expected[id];
  }
}

TEST(Sampler, GreedyIsArgmaxLowestIdOnTies) {
  Sampler sampler(plain(0.0), 5);
  Rng rng(1);
  std::vector<float> logits = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f};
  EXPECT_EQ(sampler.sample(logits.data(), {}, rng), 1);
  std::vector<float> negative = {-4.0f, -2.0f, -3.0f, -2.0f, -9.0f};
  EXPECT_EQ(sampler.sample(negative.data(), {}, rng), 1);
  EXPECT_EQ(argmax(logits.data(), 5), 1);
}

TEST(Sampler, GreedyDoesNotDrawFromTheGenerator) {
  Sampler sampler(plain(0.0), 3);
  Rng used(5), untouched(5);
  std::vector<float> logits = {0.0f, 1.0f, 0.5f};
  sampler.sample(logits.data(), {}, used);
  EXPECT_EQ(used.state(), untouched.state());
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeOncePerId) {
  SamplingParams p = plain(0.0);
  p.repetition_penalty = 2.0;
  Sampler sampler(p, 6);
  Rng rng(1);
  std::vector<float> logits = {2.0f, -2.0f, 0.5f, -0.5f, 3.0f, 0.0f};
  const std::vector<int32_t> context = {0, 1, 1, 3, 0, 5};  // repeats are penalised once
  sampler.sample(logits.data(), context, rng);
  const std::vector<float> expected = {1.0f, -4.0f, 0.5f, -1.0f, 3.0f, 0.0f};
  EXPECT_EQ(logits, expected);
}

TEST(Sampler, RepetitionPenaltyChangesTheGreedyChoice) {
  SamplingParams p = plain(0.0);
  p.repetition_penalty = 1.5;
  Sampler sampler(p, 3);
  Rng rng(1);
  std::vector<float> logits = {3.0f, 2.5f, 1.0f};  // 3 / 1.5 = 2 < 2.5
  const std::vector<int32_t> context = {0};
  EXPECT_EQ(sampler.sample(logits.data(), context, rng), 1);
  // A penalty below 1 rewards repeats: -1 * 0.5 = -0.5 > -0.6.
  p.repetition_penalty = 0.5;
  Sampler rewarding(p, 2);
  std::vector<float> negative = {-1.0f, -0.6f};
  EXPECT_EQ(rewarding.sample(negative.data(), context, rng), 0);
}

TEST(Sampler, TinyTemperatureIsGreedy) {
  const std::vector<float> logits = {0.1f, 0.4f, 0.39f, -2.0f};
  const auto counts = histogram(plain(1e-4), logits, 2000);
  EXPECT_EQ(support(counts), (std::set<int32_t>{1}));
  // And a temperature so small that logit / T overflows a float still gives the argmax.
  EXPECT_EQ(support(histogram(plain(1e-300), logits, 200)), (std::set<int32_t>{1}));
}

TEST(Sampler, TopKKeepsTheKLargestAndTheirTies) {
  SamplingParams p = plain();
  p.top_k = 3;
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  EXPECT_EQ(support(histogram(p, logits, 4000)), (std::set<int32_t>{3, 4, 5}));
  // Tied with the 2nd largest: HF keeps every logit >= the k-th value.
  p.top_k = 2;
  const std::vector<float> tied = {1.0f, 2.0f, 2.0f, 2.0f, 0.0f};
  EXPECT_EQ(support(histogram(p, tied, 4000)), (std::set<int32_t>{1, 2, 3}));
  p.top_k = 1;
  EXPECT_EQ(support(histogram(p, logits, 500)), (std::set<int32_t>{5}));
}

TEST(Sampler, TopPKeepsTheSmallestSetReachingP) {
  const std::vector<float> logits = logits_of({0.05, 0.5, 0.15, 0.3});  // sorted: 1, 3, 2, 0
  SamplingParams p = plain();
  p.top_p = 0.4;
  EXPECT_EQ(support(histogram(p, logits, 2000)), (std::set<int32_t>{1}));
  p.top_p = 0.75;
  const int draws = 20000;
  const auto counts = histogram(p, logits, draws);
  EXPECT_EQ(support(counts), (std::set<int32_t>{1, 3}));
  expect_frequencies(counts, {0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8}, draws);  // renormalised
  p.top_p = 0.9;
  EXPECT_EQ(support(histogram(p, logits, 8000)), (std::set<int32_t>{1, 2, 3}));
  p.top_p = 1.0;
  EXPECT_EQ(support(histogram(p, logits, 8000)), (std::set<int32_t>{0, 1, 2, 3}));
}

TEST(Sampler, TopPOnAFlatDistribution) {
  // 300 equally likely tokens: 150 hold 0.5, so top-p 0.5001 keeps 151.
  const std::vector<float> logits(300, 1.0f);
  SamplingParams p = plain();
  p.top_p = 0.5 + 1e-4;
  EXPECT_EQ(support(histogram(p, logits, 10000)).size(), 151u);
}

TEST(Sampler, TopPOnManyDistinctProbabilities) {
  // p_i proportional to i + 1 over 200 ids (so the selection partitions several times); the
  // expected set is the head of the sorted list, with top_p halfway between two cumulative sums.
  const int n = 200;
  std::vector<double> probs(n);
  for (int i = 0; i < n; ++i) probs[size_t(i)] = (i + 1) / (n * (n + 1) / 2.0);
  std::set<int32_t> expected;
  double cumulative = 0;
  int id = n - 1;
  while (cumulative + probs[size_t(id)] < 0.5) {
    cumulative += probs[size_t(id)];
    expected.insert(id--);
  }
  expected.insert(id);
  SamplingParams p = plain();
  p.top_p = cumulative + probs[size_t(id)] / 2;  // needs exactly the ids in `expected`
  EXPECT_EQ(support(histogram(p, logits_of(probs), 8000)), expected);
}

TEST(Sampler, MinPKeepsTokensAboveAShareOfTheMax) {
  const std::vector<float> logits = logits_of({0.5, 0.3, 0.15, 0.05});
  SamplingParams p = plain();
  p.min_p = 0.2;  // threshold 0.1
  EXPECT_EQ(support(histogram(p, logits, 8000)), (std::set<int32_t>{0, 1, 2}));
  p.min_p = 0.5;  // threshold 0.25
  const int draws = 20000;
  const auto counts = histogram(p, logits, draws);
  EXPECT_EQ(support(counts), (std::set<int32_t>{0, 1}));
  expect_frequencies(counts, {0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0}, draws);
}

TEST(Sampler, MinPAndTopPTogetherKeepTheSmallerHead) {
  const std::vector<float> logits = logits_of({0.4, 0.3, 0.2, 0.1});
  SamplingParams p = plain();
  p.min_p = 0.4;  // threshold 0.16: keeps 0, 1, 2
  p.top_p = 0.95;  // alone keeps all four
  EXPECT_EQ(support(histogram(p, logits, 8000)), (std::set<int32_t>{0, 1, 2}));
  p.top_p = 0.6;  // alone keeps 0, 1
  EXPECT_EQ(support(histogram(p, logits, 8000)), (std::set<int32_t>{0, 1}));
}

TEST(Sampler, TopPActsOnTheDistributionTopKLeft) {
  // After top-k 3 the probabilities are 0.4/0.9, 0.3/0.9, 0.2/0.9: 0.444 + 0.333 >= 0.75 keeps
  // two tokens. Applied to the original distribution, 0.4 + 0.3 < 0.75 would keep three.
  const std::vector<float> logits = logits_of({0.4, 0.3, 0.2, 0.1});
  SamplingParams p = plain();
  p.top_k = 3;
  p.top_p = 0.75;
  EXPECT_EQ(support(histogram(p, logits, 8000)), (std::set<int32_t>{0, 1}));
}

TEST(Sampler, FrequenciesMatchTheDistribution) {
  const std::vector<double> probs = {0.1, 0.2, 0.3, 0.4};
  const int draws = 20000;
  expect_frequencies(histogram(plain(), logits_of(probs), draws), probs, draws);
  // Temperature 2: p_i^(1/2), renormalised.
  std::vector<double> tempered;
  double sum = 0;
  for (double q : probs) sum += std::sqrt(q);
  for (double q : probs) tempered.push_back(std::sqrt(q) / sum);
  expect_frequencies(histogram(plain(2.0), logits_of(probs), draws), tempered, draws);
}

TEST(Sampler, SameSeedSameDrawsOtherSeedOtherDraws) {
  const std::vector<float> logits(50, 0.0f);
  auto draws = [&](uint64_t seed) {
    Sampler sampler(plain(), 50);
    Rng rng(seed);
    std::vector<int32_t> out;
    for (int i = 0; i < 100; ++i) {
      std::vector<float> row = logits;
      out.push_back(sampler.sample(row.data(), {}, rng));
    }
    return out;
  };
  EXPECT_EQ(draws(42), draws(42));
  EXPECT_NE(draws(42), draws(43));
}

TEST(Sampler, RefusesOutOfRangeParameters) {
  auto problem_field = [](auto edit) {
    SamplingParams p;
    edit(p);
    const auto problem = find_sampling_problem(p);
    return problem ? std::optional<SamplingField>(problem->field) : std::nullopt;
  };
  EXPECT_EQ(problem_field([](SamplingParams&) {}), std::nullopt);
  EXPECT_EQ(problem_field([](SamplingParams& p) { p.temperature = -1; }), SamplingField::Temperature);
  EXPECT_EQ(problem_field([](SamplingParams& p) { p.temperature = NAN; }), SamplingField::Temperature);
  EXPECT_EQ(problem_field([](SamplingParams& p) { p.temperature = INFINITY; }), SamplingField::Temperature);
  EXPECT_EQ(problem_field([](SamplingParams& p) { p.top_k = -1; }), SamplingField::TopK);
  EXPECT_EQ(problem_field([](SamplingParams& p) { p.top_p = 0; }), SamplingField::TopP);
  EXPECT_EQ(problem_field([](SamplingParams& p) { p.top_p = 1.5; }), SamplingField::TopP);
  EXPECT_EQ(problem_field([](SamplingParams& p) { p.min_p = 1; }), SamplingField::MinP);
  EXPECT_EQ(problem_field([](SamplingParams& p) { p.min_p = -0.1; }), SamplingField::MinP);
  EXPECT_EQ(problem_field([](SamplingParams& p) { p.repetition_penalty = 0; }), SamplingField::RepetitionPenalty);
  SamplingParams bad;
  bad.top_p = 0;
  try {
    Sampler sampler(bad, 10);
    FAIL() << "top_p 0 was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadInput);
    EXPECT_NE(std::string(e.what()).find("top_p"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mambacpp
