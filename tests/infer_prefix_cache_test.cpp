// The prefix-state cache (infer/prefix_cache.h) on a random model: a prompt resumed from a cached
// boundary gives bit-identical logits to a cold prefill cut at the same grid; the whole-prompt
// entry hands back the cold logits; a lookup always leaves a token to run unless the logits are
// cached; entries stored as not resumable are never continued; LRU eviction keeps the budget.
// Also InferenceState::set_batch, which the serving engine's batch relies on.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/rng.h"
#include "core/threads.h"
#include "infer/prefix_cache.h"
#include "model/mamba_model.h"
#include "model_test_support.h"

namespace mambacpp {
namespace {

using testing::expect_parity;

// Small, but with pieces of 64 rows the matrix products take the GEMM path, so a piece cut
// elsewhere would round differently: the grid is what makes cached == cold bit for bit.
MambaConfig small_shape() {
  MambaConfig c;
  c.vocab_size = 300;
  c.d_model = 32;
  c.n_layer = 2;
  c.d_state = 8;
  c.d_inner = 64;
  c.d_conv = 4;
  c.dt_rank = 2;
  return c;
}

constexpr int64_t kGrid = 64;

std::vector<int32_t> random_tokens(size_t n, uint64_t seed, int64_t vocab) {
  Rng rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = int32_t(rng.below(uint64_t(vocab)));
  return ids;
}

class PrefixCacheTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    set_num_threads(1);
    model_ = new MambaModel(MambaModel::random(small_shape(), 7));
  }
  static void TearDownTestSuite() { delete model_; }

  int64_t vocab() const { return model_->config().vocab_size; }
  std::vector<float> logits_row() const { return std::vector<float>(size_t(vocab())); }

  // Runs tokens[from, size) on `state` in pieces ending at multiples of kGrid (counted from the
  // prompt's start) and returns the last logits; with a cache, stores every grid boundary as
  // resumable and the end with its logits, as the serving engine does.
  std::vector<float> prefill(const std::vector<int32_t>& tokens, int64_t from, InferenceState& state,
                             PrefixStateCache* cache = nullptr) {
    std::vector<float> logits = logits_row();
    const int64_t n = int64_t(tokens.size());
    for (int64_t start = from; start < n;) {
      const int64_t end = std::min(n, (start / kGrid + 1) * kGrid);
      const bool last = end == n;
      model_->forward(tokens.data() + start, 1, end - start, state, last ? LogitsMode::Last : LogitsMode::None,
                      last ? logits.data() : nullptr);
      if (cache && (end % kGrid == 0 || last))
        cache->insert(std::span<const int32_t>(tokens).first(size_t(end)), state, 0, end % kGrid == 0,
                      last ? std::span<const float>(logits) : std::span<const float>());
      start = end;
    }
    return logits;
  }

  std::vector<float> cold(const std::vector<int32_t>& tokens) {
    InferenceState state = model_->new_state(1);
    return prefill(tokens, 0, state);
  }

  static void expect_bitwise_equal(const std::string& what, const std::vector<float>& expected,
                                   const std::vector<float>& actual) {
    ASSERT_EQ(expected.size(), actual.size());
    expect_parity(what, expected.data(), actual.data(), int64_t(expected.size()), 0.0);
    EXPECT_EQ(std::memcmp(expected.data(), actual.data(), expected.size() * sizeof(float)), 0) << what;
  }

  static MambaModel* model_;
};

MambaModel* PrefixCacheTest::model_ = nullptr;

TEST_F(PrefixCacheTest, ResumedPromptEqualsColdRunBitForBit) {
  PrefixStateCache cache(model_->config(), 64 << 20);
  const std::vector<int32_t> first = random_tokens(300, 1, vocab());
  InferenceState state = model_->new_state(1);
  prefill(first, 0, state, &cache);
  EXPECT_EQ(cache.entries(), 5);  // 64, 128, 192, 256 and the end (300)

  // Shares 200 tokens with `first`: the longest resumable prefix is 192.
  std::vector<int32_t> second(first.begin(), first.begin() + 200);
  const std::vector<int32_t> tail = random_tokens(83, 2, vocab());
  second.insert(second.end(), tail.begin(), tail.end());
  InferenceState resumed = model_->new_state(1);
  std::vector<float> unused = logits_row();
  const PrefixStateCache::Match match = cache.lookup(second, resumed, 0, unused.data());
  EXPECT_EQ(match.length, 192);
  EXPECT_FALSE(match.with_logits);
  expect_bitwise_equal("resumed at 192 vs cold", cold(second), prefill(second, match.length, resumed));
}

TEST_F(PrefixCacheTest, WholePromptEntryGivesTheColdLogitsWithoutRunning) {
  PrefixStateCache cache(model_->config(), 64 << 20);
  const std::vector<int32_t> prompt = random_tokens(150, 3, vocab());
  InferenceState state = model_->new_state(1);
  const std::vector<float> cold_logits = prefill(prompt, 0, state, &cache);

  InferenceState from_cache = model_->new_state(2);
  std::vector<float> logits = logits_row();
  const PrefixStateCache::Match match = cache.lookup(prompt, from_cache, 1, logits.data());
  EXPECT_EQ(match.length, 150);
  EXPECT_TRUE(match.with_logits);
  expect_bitwise_equal("cached logits vs cold", cold_logits, logits);
  // The state went to slot 1: one more token from it equals one more token after a cold run.
  const int32_t next = 5;
  std::vector<float> a = logits_row(), b = logits_row();
  InferenceState slot1 = model_->new_state(1);
  slot1.copy_slot(from_cache, 1, 0);
  model_->step(&next, state, a.data());
  model_->step(&next, slot1, b.data());
  expect_bitwise_equal("step after the cached state vs after the cold state", a, b);
}

TEST_F(PrefixCacheTest, LeavesATokenToRunUnlessTheLogitsAreCached) {
  PrefixStateCache cache(model_->config(), 64 << 20);
  const std::vector<int32_t> long_prompt = random_tokens(200, 4, vocab());
  InferenceState state = model_->new_state(1);
  prefill(long_prompt, 0, state, &cache);  // boundaries 64, 128, 192; end 200 with logits

  // Exactly the 128-token boundary: cached without logits, so only 64 tokens may come from it.
  const std::vector<int32_t> boundary(long_prompt.begin(), long_prompt.begin() + 128);
  InferenceState target = model_->new_state(1);
  std::vector<float> logits = logits_row();
  EXPECT_EQ(cache.lookup(boundary, target, 0, logits.data()).length, 64);

  // A prompt extending the 200-token one: that entry ends off the grid, so it is not resumable
  // (a cold run would cut the new prompt at 256, not at 200); the boundary 192 is used.
  std::vector<int32_t> longer = long_prompt;
  longer.push_back(9);
  EXPECT_EQ(cache.lookup(longer, target, 0, logits.data()).length, 192);
}

TEST_F(PrefixCacheTest, MissLeavesTheStateUntouched) {
  PrefixStateCache cache(model_->config(), 64 << 20);
  const std::vector<int32_t> prompt = random_tokens(130, 5, vocab());
  InferenceState state = model_->new_state(1);
  prefill(prompt, 0, state, &cache);

  std::vector<int32_t> other = prompt;
  other[0] = (other[0] + 1) % int32_t(vocab());  // differs in the first token only
  InferenceState target = model_->new_state(1);
  const int32_t token = 3;
  std::vector<float> logits = logits_row();
  model_->step(&token, target, logits.data());  // some non-zero state
  InferenceState before = model_->new_state(1);
  before.copy_slot(target, 0, 0);
  EXPECT_EQ(cache.lookup(other, target, 0, logits.data()).length, 0);
  for (int l = 0; l < int(model_->config().n_layer); ++l) {
    const size_t ssm = size_t(model_->config().d_inner * model_->config().d_state);
    EXPECT_EQ(std::memcmp(before.ssm(l), target.ssm(l), ssm * sizeof(float)), 0) << "layer " << l;
  }
}

TEST_F(PrefixCacheTest, EvictsTheLeastRecentlyUsedWithinTheBudget) {
  const std::vector<int32_t> a = random_tokens(64, 6, vocab()), b = random_tokens(64, 7, vocab()),
                             c = random_tokens(64, 8, vocab());
  InferenceState state = model_->new_state(1);
  const int64_t one_entry = int64_t(state.bytes() + 64 * sizeof(int32_t)) + 256;
  PrefixStateCache cache(model_->config(), 2 * one_entry + 100);
  cache.insert(a, state, 0, true);
  cache.insert(b, state, 0, true);
  EXPECT_EQ(cache.entries(), 2);
  std::vector<float> logits = logits_row();
  auto cached_length = [&](std::vector<int32_t> prompt) {
    prompt.push_back(1);  // a token after the boundary to run
    return cache.lookup(prompt, state, 0, logits.data()).length;
  };
  EXPECT_EQ(cached_length(a), 64);  // a is now the most recent
  cache.insert(c, state, 0, true);  // evicts b
  EXPECT_EQ(cache.entries(), 2);
  EXPECT_LE(cache.bytes(), cache.capacity_bytes());
  EXPECT_EQ(cached_length(b), 0);
  EXPECT_EQ(cached_length(a), 64);
  EXPECT_EQ(cached_length(c), 64);

  PrefixStateCache tiny(model_->config(), one_entry / 2);  // smaller than one state
  tiny.insert(a, state, 0, true);
  EXPECT_EQ(tiny.entries(), 0);
  EXPECT_EQ(tiny.bytes(), 0);
}

TEST(InferenceStateTest, SetBatchKeepsTheFirstSlotsAndZeroesNewOnes) {
  const MambaConfig c = small_shape();
  InferenceState state(c, 3);
  const size_t conv = size_t(c.d_inner * (c.d_conv - 1)), ssm = size_t(c.d_inner * c.d_state);
  auto fill = [&](InferenceState& s, int slot, float base) {
    for (int l = 0; l < int(c.n_layer); ++l) {
      for (size_t i = 0; i < conv; ++i) s.conv(l)[slot * conv + i] = base + float(l) + float(i) * 1e-3f;
      for (size_t i = 0; i < ssm; ++i) s.ssm(l)[slot * ssm + i] = -base - float(l) - float(i) * 1e-3f;
    }
  };
  auto expect_slot = [&](const InferenceState& s, int slot, float base, const char* when) {
    for (int l = 0; l < int(c.n_layer); ++l) {
      for (size_t i = 0; i < conv; ++i)
        ASSERT_EQ(s.conv(l)[slot * conv + i], base == 0 ? 0.0f : base + float(l) + float(i) * 1e-3f)
            << when << ": slot " << slot << " layer " << l << " conv " << i;
      for (size_t i = 0; i < ssm; ++i)
        ASSERT_EQ(s.ssm(l)[slot * ssm + i], base == 0 ? 0.0f : -base - float(l) - float(i) * 1e-3f)
            << when << ": slot " << slot << " layer " << l << " ssm " << i;
    }
  };
  for (int s = 0; s < 3; ++s) fill(state, s, float(10 * (s + 1)));
  state.set_batch(2);
  EXPECT_EQ(state.batch(), 2);
  EXPECT_EQ(state.bytes(), InferenceState(c, 2).bytes());
  expect_slot(state, 0, 10, "shrunk to 2");
  expect_slot(state, 1, 20, "shrunk to 2");
  state.set_batch(3);  // within the memory kept: the old third slot must not come back
  expect_slot(state, 2, 0, "grown back to 3");
  state.set_batch(5);
  EXPECT_EQ(state.bytes(), InferenceState(c, 5).bytes());
  expect_slot(state, 0, 10, "grown to 5");
  expect_slot(state, 1, 20, "grown to 5");
  for (int s = 2; s < 5; ++s) expect_slot(state, s, 0, "grown to 5");
}

}  // namespace
}  // namespace mambacpp
