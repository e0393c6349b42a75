// The generator on tests/data/hf-tiny-mamba: greedy tokens equal transformers' generate(); a
// batch of prompts of different lengths gives each sequence exactly its solo run (greedy and
// seeded sampling, with sequences ending at different steps); EOS, stop strings, streaming.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "infer/generator.h"
#include "io/safetensors.h"
#include "model/mamba_model.h"
#include "model_test_support.h"
#include "text/tokenizer.h"

namespace mambacpp {
namespace {

using testing::test_data;
using testing::to_ids;

class GenerateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // One thread: on a busy 2-core CI machine, threads waiting at OpenMP barriers make a model
    // this small many times slower. SampledBatchesEqualSoloRuns also runs on two.
    set_num_threads(1);
    model_ = new MambaModel(MambaModel::load(test_data("hf-tiny-mamba")));
    reference_ = new SafetensorsFile(read_safetensors(test_data("hf-tiny-mamba/reference.safetensors")));
    tokenizer_ = new Tokenizer(Tokenizer::from_file(test_data("tokenizer/tokenizer.json")));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete reference_;
    delete tokenizer_;
  }

  static std::vector<int32_t> reference_ids(const std::string& name) { return to_ids(reference_->tensors.at(name)); }

  // Prompt b of a batch: a slice of the reference input_ids, lengths 1 to 15, all different.
  static std::vector<std::vector<int32_t>> prompts(int count) {
    const std::vector<int32_t> ids = reference_ids("input_ids");  // [2, 37]
    std::vector<std::vector<int32_t>> out;
    for (int b = 0; b < count; ++b) {
      const size_t start = size_t(b % 2) * 37 + size_t(b), length = size_t(1 + 2 * b);
      out.emplace_back(ids.begin() + ptrdiff_t(start), ids.begin() + ptrdiff_t(start + length));
    }
    return out;
  }

  static GenerationOptions sampling_options() {
    GenerationOptions o;
    o.sampling.temperature = 1.0;
    o.sampling.top_k = 0;
    o.sampling.top_p = 1.0;
    o.sampling.min_p = 0.0;
    o.sampling.repetition_penalty = 1.3;
    o.sampling.seed = 1234;
    o.max_new_tokens = 12;
    return o;
  }

  static GenerationOptions greedy_options() {
    GenerationOptions o;
    o.sampling.temperature = 0.0;
    o.max_new_tokens = 12;
    return o;
  }

  static Completion solo(const std::vector<int32_t>& prompt, const GenerationOptions& options,
                         const Tokenizer* tokenizer = nullptr) {
    Generator generator(*model_, tokenizer);
    return generator.generate({prompt}, options).at(0);
  }

  // Each sequence of batches of 1..max_batch prompts equals its solo run.
  static void expect_batches_equal_solo_runs(const GenerationOptions& options, int max_batch = 8) {
    const auto all = prompts(max_batch);
    std::vector<Completion> solos;
    for (const auto& p : all) solos.push_back(solo(p, options));
    for (int batch = 1; batch <= max_batch; ++batch) {
      const std::vector<std::vector<int32_t>> some(all.begin(), all.begin() + batch);
      Generator generator(*model_, nullptr);
      const std::vector<Completion> got = generator.generate(some, options);
      ASSERT_EQ(got.size(), size_t(batch));
      for (int b = 0; b < batch; ++b) {
        EXPECT_EQ(got[size_t(b)].ids, solos[size_t(b)].ids) << "sequence " << b << " of a batch of " << batch;
        EXPECT_EQ(got[size_t(b)].reason, solos[size_t(b)].reason) << "sequence " << b << " of a batch of " << batch;
      }
    }
  }

  static MambaModel* model_;
  static SafetensorsFile* reference_;
  static Tokenizer* tokenizer_;
};

MambaModel* GenerateTest::model_ = nullptr;
SafetensorsFile* GenerateTest::reference_ = nullptr;
Tokenizer* GenerateTest::tokenizer_ = nullptr;

TEST_F(GenerateTest, GreedyEqualsTransformersGenerate) {
  const std::vector<int32_t> prompt = reference_ids("greedy_prompt");
  const std::vector<int32_t> expected = reference_ids("greedy_tokens");
  GenerationOptions options = greedy_options();
  options.max_new_tokens = int64_t(expected.size() - prompt.size());
  options.eos_id = int32_t(model_->config().eos_token_id.value());
  const Completion c = solo(prompt, options);
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), c.ids.begin(), c.ids.end());
  EXPECT_EQ(all, expected);
  EXPECT_EQ(c.reason, FinishReason::Length);
}

TEST_F(GenerateTest, GreedyBatchesEqualSoloRuns) { expect_batches_equal_solo_runs(greedy_options()); }

TEST_F(GenerateTest, SampledBatchesEqualSoloRuns) {
  const GenerationOptions options = sampling_options();
  // The random model samples varied tokens; a degenerate run would prove little.
  const Completion first = solo(prompts(1)[0], options);
  EXPECT_GT(std::set<int32_t>(first.ids.begin(), first.ids.end()).size(), 3u);
  expect_batches_equal_solo_runs(options);
  // Work split over threads must not make a row depend on the batch either (kept small: see
  // SetUpTestSuite).
  set_num_threads(2);
  GenerationOptions short_run = options;
  short_run.max_new_tokens = 4;
  expect_batches_equal_solo_runs(short_run, 3);
  set_num_threads(1);
}

TEST_F(GenerateTest, SequencesEndingAtDifferentStepsStillEqualSoloRuns) {
  // EOS = a token that some sequences sample early: they leave the batch, which shrinks.
  GenerationOptions options = sampling_options();
  options.max_new_tokens = 16;
  const auto all = prompts(8);
  std::vector<int32_t> sampled;
  for (const auto& p : all) {
    const Completion c = solo(p, options);
    sampled.insert(sampled.end(), c.ids.begin(), c.ids.begin() + 4);
  }
  options.eos_id = sampled[2];
  int ended_early = 0;
  for (const auto& p : all) ended_early += solo(p, options).reason == FinishReason::Eos;
  EXPECT_GE(ended_early, 1);
  EXPECT_LT(ended_early, 8);
  expect_batches_equal_solo_runs(options);
}

TEST_F(GenerateTest, SameSeedSameTokensOtherSeedOtherTokens) {
  GenerationOptions options = sampling_options();
  const auto prompt = prompts(3)[2];
  const auto a = solo(prompt, options).ids;
  EXPECT_EQ(solo(prompt, options).ids, a);
  options.sampling.seed = 99;
  EXPECT_NE(solo(prompt, options).ids, a);
}

TEST_F(GenerateTest, StopsAtEosAndKeepsIt) {
  GenerationOptions options = greedy_options();
  options.eos_id = 272;  // the greedy continuation of greedy_prompt is 272 272 ...
  const Completion c = solo(reference_ids("greedy_prompt"), options);
  EXPECT_EQ(c.ids, std::vector<int32_t>{272});
  EXPECT_EQ(c.reason, FinishReason::Eos);
}

TEST_F(GenerateTest, MaxNewTokensZeroGeneratesNothing) {
  GenerationOptions options = greedy_options();
  options.max_new_tokens = 0;
  EXPECT_TRUE(solo(prompts(2)[1], options).ids.empty());
}

TEST_F(GenerateTest, StreamedTextIsTheDecodedCompletion) {
  GenerationOptions options = sampling_options();
  options.max_new_tokens = 20;
  const auto all = prompts(3);
  std::vector<std::string> streamed(all.size());
  Generator generator(*model_, tokenizer_);
  const auto got = generator.generate(all, options, [&](size_t i, std::string_view text) { streamed[i] += text; });
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(got[i].text, tokenizer_->decode(got[i].ids)) << "sequence " << i;
    EXPECT_EQ(streamed[i], got[i].text) << "sequence " << i;
  }
}

TEST_F(GenerateTest, StopStringCutsTheTextAndEndsTheSequence) {
  GenerationOptions options = sampling_options();
  options.max_new_tokens = 20;
  const auto prompt = prompts(4)[3];
  const Completion full = solo(prompt, options, tokenizer_);
  // A stop string of two printable ASCII bytes from the middle of the full completion.
  size_t at = full.text.size() / 2;
  while (at + 2 <= full.text.size() && !(std::isgraph((unsigned char)full.text[at]) &&
                                         std::isgraph((unsigned char)full.text[at + 1])))
    ++at;
  ASSERT_LE(at + 2, full.text.size()) << "no printable pair in: " << full.text;
  const std::string stop = full.text.substr(at, 2);
  const std::string expected_text = full.text.substr(0, full.text.find(stop));

  options.stop = {"never appears \x01", stop};
  std::string streamed;
  Generator generator(*model_, tokenizer_);
  const Completion c =
      generator.generate({prompt}, options, [&](size_t, std::string_view text) { streamed += text; }).at(0);
  EXPECT_EQ(c.reason, FinishReason::StopString);
  EXPECT_EQ(c.text, expected_text);
  EXPECT_EQ(streamed, expected_text);
  // The ids end with the token that completed the stop string.
  ASSERT_FALSE(c.ids.empty());
  ASSERT_TRUE(std::equal(c.ids.begin(), c.ids.end(), full.ids.begin()));
  const std::vector<int32_t> before_last(c.ids.begin(), c.ids.end() - 1);
  EXPECT_NE(tokenizer_->decode(c.ids).find(stop), std::string::npos);
  EXPECT_EQ(tokenizer_->decode(before_last).find(stop), std::string::npos);
}

TEST_F(GenerateTest, RefusesEmptyPromptsAndIdsOutsideTheVocabulary) {
  Generator generator(*model_, nullptr);
  const GenerationOptions options = greedy_options();
  try {
    generator.generate({{1, 2}, {}}, options);
    FAIL() << "an empty prompt was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadInput);
    EXPECT_NE(std::string(e.what()).find("at least one token"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("prompt 2"), std::string::npos) << e.what();
  }
  try {
    generator.generate({{1, 2, 512}}, options);
    FAIL() << "id 512 was accepted by a model of vocab 512";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadInput);
    EXPECT_NE(std::string(e.what()).find("id 512 at position 3"), std::string::npos) << e.what();
  }
  GenerationOptions with_stop = options;
  with_stop.stop = {"x"};
  EXPECT_THROW(generator.generate({{1}}, with_stop), Error);  // stop strings need a tokenizer
}

}  // namespace
}  // namespace mambacpp
