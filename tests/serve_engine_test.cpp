// The serving engine (serve/engine.h) on tests/data/hf-tiny-mamba with its tokenizer and on small
// random models: every request's ids, text and finish reason equal the Generator's solo run for
// the same prompt and settings, alone and among 31 other concurrent requests (greedy and seeded
// sampling, repetition penalty, stop strings, EOS, prompts sharing cached prefixes, chunked
// prefill); a saved state continues exactly like one cold request; foreign or damaged states and
// bad ids are refused; invalid requests name their field; a full queue refuses at once;
// cancellation, a failing request and destruction end only what they should.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "infer/generator.h"
#include "model/mamba_model.h"
#include "model_test_support.h"
#include "serve/engine.h"
#include "text/tokenizer.h"

namespace mambacpp::serve {
namespace {

using namespace std::chrono_literals;
using mambacpp::testing::expect_bad_input;
using mambacpp::testing::TempDir;
using mambacpp::testing::test_data;

// Everything a stream delivered.
struct Outcome {
  std::vector<int32_t> ids;
  std::string text;
  std::optional<FinishReason> reason;  // set by Finished
  std::string error;                   // set by Error
  RequestTiming timing;
};

Outcome collect(Stream& stream, std::chrono::seconds limit = 120s) {
  Outcome out;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    std::optional<StreamEvent> e = stream.next(100ms);
    if (!e) continue;
    switch (e->kind) {
      case StreamEvent::Kind::Tokens:
        out.ids.insert(out.ids.end(), e->ids.begin(), e->ids.end());
        out.text += e->text;
        break;
      case StreamEvent::Kind::Finished:
        out.reason = e->reason;
        out.timing = stream.timing();
        return out;
      case StreamEvent::Kind::Error:
        out.error = e->error;
        return out;
    }
  }
  ADD_FAILURE() << "stream " << stream.id() << " did not end within " << limit.count() << " s";
  return out;
}

// Ids that arrived so far, without waiting.
size_t drain(Stream& stream) {
  size_t ids = 0;
  while (std::optional<StreamEvent> e = stream.next(0ms)) ids += e->ids.size();
  return ids;
}

// Waits until the engine reports nothing running or queued (it updates after each iteration).
EngineMetrics settled_metrics(const Engine& engine) {
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  EngineMetrics m = engine.metrics();
  while ((m.running != 0 || m.queued != 0) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
    m = engine.metrics();
  }
  return m;
}

std::vector<int32_t> random_ids(size_t n, uint64_t seed, int64_t vocab) {
  Rng rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = int32_t(rng.below(uint64_t(vocab)));
  return ids;
}

std::vector<int32_t> joined(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

MambaConfig small_shape(int64_t vocab) {
  MambaConfig c;
  c.vocab_size = vocab;
  c.d_model = 32;
  c.n_layer = 2;
  c.d_state = 8;
  c.d_inner = 64;
  c.d_conv = 4;
  c.dt_rank = 2;
  return c;
}

// Request i of a varied set: greedy, sampled with its own seed, top-k/top-p/min-p, repetition
// penalty, stop strings (with a tokenizer), an EOS that some sequences sample, 1 to 24 tokens.
GenerationOptions varied_options(int i, bool with_tokenizer) {
  GenerationOptions g;
  g.max_new_tokens = 1 + (i * 7) % 24;
  switch (i % 4) {
    case 0: g.sampling.temperature = 0; break;
    case 1:
      g.sampling = {1.0, 0, 1.0, 0.0, 1.3, uint64_t(1000 + i)};
      break;
    case 2:
      g.sampling = {0.7, 20, 0.9, 0.05, 1.0, uint64_t(i)};
      if (with_tokenizer) g.stop = {"e", "\n"};
      break;
    case 3:
      g.sampling = {1.2, 50, 0.95, 0.0, 1.1, 7};
      g.eos_id = 17 + i;
      break;
  }
  return g;
}

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    set_num_threads(1);  // as the generator tests: a model this small is fastest on one thread
    model_ = new MambaModel(MambaModel::load(test_data("hf-tiny-mamba")));
    tokenizer_ = new Tokenizer(Tokenizer::from_file(test_data("tokenizer/tokenizer.json")));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tokenizer_;
  }

  static Completion solo(MambaModel& model, const Tokenizer* tokenizer, const std::vector<int32_t>& prompt,
                         const GenerationOptions& options) {
    Generator generator(model, tokenizer);
    return generator.generate({prompt}, options).at(0);
  }

  static void expect_same(const Outcome& got, const Completion& expected, const std::string& what) {
    EXPECT_TRUE(got.error.empty()) << what << ": " << got.error;
    EXPECT_EQ(got.ids, expected.ids) << what;
    EXPECT_EQ(got.text, expected.text) << what;
    ASSERT_TRUE(got.reason.has_value()) << what;
    EXPECT_EQ(*got.reason, expected.reason) << what;
  }

  static CompletionRequest request(std::vector<int32_t> prompt, GenerationOptions g) {
    CompletionRequest r;
    r.prompt = std::move(prompt);
    r.generation = std::move(g);
    return r;
  }

  // Submits every request at once (or, with `staggered`, the second half once the first half
  // streams), then checks each against its solo Generator run.
  static EngineMetrics expect_concurrent_equal_solo(MambaModel& model, const Tokenizer* tokenizer,
                                                    const std::vector<CompletionRequest>& requests,
                                                    const EngineOptions& options, bool staggered) {
    std::vector<Completion> expected;
    for (const auto& r : requests) expected.push_back(solo(model, tokenizer, r.prompt, r.generation));
    Engine engine(model, tokenizer, options);
    std::vector<std::shared_ptr<Stream>> streams;
    const size_t first_wave = staggered ? requests.size() / 2 : requests.size();
    for (size_t i = 0; i < requests.size(); ++i) {
      if (i == first_wave) {  // wait until the first wave streams, so the rest join a running batch
        const auto deadline = std::chrono::steady_clock::now() + 60s;
        while (engine.metrics().generated_tokens_total == 0 && std::chrono::steady_clock::now() < deadline)
          std::this_thread::sleep_for(1ms);
      }
      streams.push_back(engine.submit(requests[i]));
      EXPECT_NE(streams.back(), nullptr);
    }
    for (size_t i = 0; i < streams.size(); ++i)
      if (streams[i]) expect_same(collect(*streams[i]), expected[i], "request " + std::to_string(i));
    return settled_metrics(engine);
  }

  static MambaModel* model_;
  static Tokenizer* tokenizer_;
};

MambaModel* EngineTest::model_ = nullptr;
Tokenizer* EngineTest::tokenizer_ = nullptr;

TEST_F(EngineTest, EachRequestAloneEqualsTheGenerator) {
  std::vector<CompletionRequest> requests;
  for (int i = 0; i < 8; ++i) requests.push_back(request(random_ids(size_t(1 + 9 * i), uint64_t(i), 512), varied_options(i, true)));
  std::vector<Completion> expected;
  for (const auto& r : requests) expected.push_back(solo(*model_, tokenizer_, r.prompt, r.generation));
  Engine engine(*model_, tokenizer_, EngineOptions{});
  for (size_t i = 0; i < requests.size(); ++i) {
    const std::shared_ptr<Stream> stream = engine.submit(requests[i]);
    ASSERT_NE(stream, nullptr);
    EXPECT_EQ(stream->id().rfind("cmpl-", 0), 0u) << stream->id();
    const Outcome got = collect(*stream);
    expect_same(got, expected[i], "request " + std::to_string(i));
    EXPECT_EQ(got.timing.prompt_tokens, int64_t(requests[i].prompt.size()));
    EXPECT_EQ(got.timing.new_tokens, int64_t(got.ids.size()));
    EXPECT_GE(got.timing.first_token_seconds, got.timing.queue_seconds);
    EXPECT_FALSE(stream->next(0ms).has_value());  // nothing after the final event
  }
}

TEST_F(EngineTest, ThirtyTwoConcurrentRequestsEqualTheirSoloRuns) {
  std::vector<CompletionRequest> requests;
  for (int i = 0; i < 32; ++i)
    requests.push_back(request(random_ids(size_t(1 + (i * 13) % 90), uint64_t(100 + i), 512), varied_options(i, true)));
  EngineOptions options;
  options.max_batch = 32;
  const EngineMetrics m = expect_concurrent_equal_solo(*model_, tokenizer_, requests, options, false);
  EXPECT_EQ(m.requests_total, 32);
  EXPECT_EQ(m.requests_failed, 0);
  EXPECT_EQ(m.time_to_first_token.count, 32);
  EXPECT_EQ(m.batch_size.count, m.steps_total);
  EXPECT_GT(m.batch_size.sum / double(m.batch_size.count), 2.0) << "the requests were not batched";
  for (const auto* h : {&m.time_to_first_token, &m.time_per_output_token, &m.batch_size}) {
    EXPECT_TRUE(std::is_sorted(h->counts.begin(), h->counts.end())) << "buckets must be cumulative";
    EXPECT_LE(h->counts.back(), h->count);
  }
}

TEST_F(EngineTest, StaggeredRequestsJoiningARunningBatchEqualTheirSoloRuns) {
  std::vector<CompletionRequest> requests;
  for (int i = 0; i < 32; ++i)
    requests.push_back(request(random_ids(size_t(1 + (i * 29) % 70), uint64_t(200 + i), 512), varied_options(i + 1, false)));
  EngineOptions options;
  options.max_batch = 12;  // also makes requests wait in the queue and be admitted as others end
  expect_concurrent_equal_solo(*model_, nullptr, requests, options, true);
}

// A random model with pieces of 32 tokens, prompts sharing prefixes of up to 150 tokens, so
// requests start from cached states while others prefill in chunks and decode. With the
// Generator cutting prompts at the same grid (chunk length 32), results are bit-identical.
TEST_F(EngineTest, SharedPrefixesFromTheCacheEqualTheirSoloRuns) {
  MambaModel model = MambaModel::random(small_shape(512), 11);
  model.set_chunk_length(32);
  const std::vector<int32_t> document = random_ids(150, 5, 512);
  std::vector<CompletionRequest> requests;
  for (int i = 0; i < 32; ++i) {
    const std::vector<int32_t> shared(document.begin(), document.begin() + (40 + 37 * i) % 150);
    requests.push_back(request(joined({shared, random_ids(size_t(1 + i % 5), uint64_t(300 + i), 512)}),
                               varied_options(i, true)));
  }
  requests.push_back(requests[3]);  // the same prompt again: its end state and logits are cached
  EngineOptions options;
  options.cache_every = 32;
  options.prefill_chunk_tokens = 64;
  const EngineMetrics m = expect_concurrent_equal_solo(model, tokenizer_, requests, options, true);
  EXPECT_GT(m.cache_hits, 0);
  EXPECT_GT(m.cache_hit_tokens, 0);
  EXPECT_EQ(m.cache_hits + m.cache_misses, 33);
  EXPECT_GT(m.cache_entries, 0);
  EXPECT_LE(m.cache_bytes, options.state_cache_bytes);
}

TEST_F(EngineTest, CachedStartsGiveTheColdRunsTokens) {
  MambaModel model = MambaModel::random(small_shape(512), 12);
  const std::vector<int32_t> document = random_ids(200, 6, 512);
  GenerationOptions g = varied_options(1, false);
  g.max_new_tokens = 16;
  const std::vector<int32_t> first = joined({document, {1, 2, 3}}), second = joined({document, {4, 5}});
  EngineOptions options;
  options.cache_every = 64;
  options.prefill_chunk_tokens = 64;

  auto run = [&](Engine& engine, const std::vector<int32_t>& prompt) { return collect(*engine.submit(request(prompt, g))); };
  EngineOptions cold_options = options;
  cold_options.state_cache_bytes = 0;
  Outcome cold_second, cold_first;
  {
    Engine cold(model, nullptr, cold_options);
    cold_second = run(cold, second);
    cold_first = run(cold, first);
    EXPECT_EQ(cold.metrics().cache_hits + cold.metrics().cache_misses, 0);
  }
  Engine engine(model, nullptr, options);
  const Outcome a = run(engine, first);
  EXPECT_EQ(a.timing.cached_prompt_tokens, 0);
  EXPECT_EQ(a.ids, cold_first.ids);
  const Outcome b = run(engine, second);  // resumes at 192, the last boundary of the shared 200
  EXPECT_EQ(b.timing.cached_prompt_tokens, 192);
  EXPECT_EQ(b.ids, cold_second.ids);
  const Outcome again = run(engine, first);  // the whole prompt and its logits are cached
  EXPECT_EQ(again.timing.cached_prompt_tokens, int64_t(first.size()));
  EXPECT_EQ(again.ids, cold_first.ids);
  const EngineMetrics m = settled_metrics(engine);
  EXPECT_EQ(m.cache_misses, 1);
  EXPECT_EQ(m.cache_hits, 2);
  EXPECT_EQ(m.cache_hit_tokens, 192 + int64_t(first.size()));
}

TEST_F(EngineTest, ASavedStateContinuesLikeOneColdRequest) {
  TempDir dir;
  EngineOptions options;
  options.state_dir = dir / "states";
  const std::vector<int32_t> a = random_ids(23, 40, 512), b = random_ids(9, 41, 512);
  for (const GenerationOptions& g : {varied_options(0, false), varied_options(1, false)}) {
    Engine engine(*model_, nullptr, options);
    const std::shared_ptr<Stream> first = engine.submit(request(a, g));
    const Outcome first_out = collect(*first);
    ASSERT_TRUE(first_out.reason.has_value()) << first_out.error;
    const std::string state = engine.save_state(first->id());
    EXPECT_TRUE(std::regex_match(state, std::regex("st-[0-9a-f]{32}"))) << state;
    EXPECT_TRUE(engine.has_state(state));
    EXPECT_TRUE(std::filesystem::is_regular_file(options.state_dir / state));
    EXPECT_EQ(engine.save_state(first->id()), state);  // saved once

    CompletionRequest next = request(b, g);
    next.start_state = state;
    const Outcome continued = collect(*engine.submit(next));
    const Outcome cold = collect(*engine.submit(request(joined({a, first_out.ids, b}), g)));
    ASSERT_TRUE(continued.reason.has_value()) << continued.error;
    EXPECT_EQ(continued.ids, cold.ids) << "temperature " << g.sampling.temperature;
    EXPECT_EQ(continued.timing.prompt_tokens, int64_t(b.size()));

    // No prompt at all: continue right after the completion.
    CompletionRequest bare = request({}, g);
    bare.start_state = state;
    EXPECT_EQ(collect(*engine.submit(bare)).ids, collect(*engine.submit(request(joined({a, first_out.ids}), g))).ids);
  }
}

TEST_F(EngineTest, RefusesForeignDamagedAndMalformedStates) {
  TempDir dir;
  EngineOptions options;
  options.state_dir = dir.path();
  std::string state;
  {
    Engine engine(*model_, nullptr, options);
    const std::shared_ptr<Stream> s = engine.submit(request({1, 2, 3}, varied_options(0, false)));
    collect(*s);
    state = engine.save_state(s->id());
    expect_bad_input([&] { engine.save_state("cmpl-unknown"); }, {"cmpl-unknown", "unknown"});
  }
  auto continue_from = [&](Engine& engine, const std::string& id) {
    CompletionRequest r = request({5}, varied_options(0, false));
    r.start_state = id;
    engine.submit(r);
  };
  {
    MambaModel other_shape = MambaModel::random(small_shape(512), 1);
    Engine engine(other_shape, nullptr, options);
    expect_bad_input([&] { continue_from(engine, state); }, {"start_state", state, "d_model 64", "has 32"});
  }
  {
    MambaModel same_shape = MambaModel::random(model_->config(), 1);
    Engine engine(same_shape, nullptr, options);
    expect_bad_input([&] { continue_from(engine, state); }, {"start_state", "other weights"});
  }
  Engine engine(*model_, nullptr, options);
  for (const std::string& bad : {std::string("../etc/passwd"), std::string("st-0123"), "st-" + std::string(32, 'A'),
                                 "st-" + std::string(31, '0') + "/", std::string(5000, 'x')}) {
    EXPECT_FALSE(engine.has_state(bad)) << bad;
    expect_bad_input([&] { continue_from(engine, bad); }, {"start_state", "not a state id"});
  }
  const std::string missing = "st-" + std::string(32, '0');
  EXPECT_FALSE(engine.has_state(missing));
  expect_bad_input([&] { continue_from(engine, missing); }, {missing, "does not exist"});
  std::filesystem::resize_file(dir / state, std::filesystem::file_size(dir / state) - 4);
  expect_bad_input([&] { continue_from(engine, state); }, {state, "damaged"});

  EngineOptions no_dir;
  Engine without(*model_, nullptr, no_dir);
  expect_bad_input([&] { continue_from(without, state); }, {"start_state", "no state directory"});
  expect_bad_input([&] { without.save_state("cmpl-x"); }, {"no state directory"});
}

TEST_F(EngineTest, InvalidRequestsNameTheField) {
  EngineOptions options;
  options.max_prompt_tokens = 100;
  options.max_new_tokens_limit = 50;
  Engine engine(*model_, nullptr, options);
  auto submit = [&](std::vector<int32_t> prompt, GenerationOptions g) {
    return [&engine, prompt, g] { engine.submit(request(prompt, g)); };
  };
  const GenerationOptions ok = varied_options(0, false);
  expect_bad_input(submit({}, ok), {"prompt", "at least one token"});
  expect_bad_input(submit({1, 512}, ok), {"prompt", "id 512", "vocab"});
  expect_bad_input(submit({-1}, ok), {"prompt", "id -1"});
  expect_bad_input(submit(std::vector<int32_t>(101, 1), ok), {"prompt", "101 tokens", "100"});
  GenerationOptions g = ok;
  g.max_new_tokens = 51;
  expect_bad_input(submit({1}, g), {"max_new_tokens", "51"});
  g = ok;
  g.max_new_tokens = -1;
  expect_bad_input(submit({1}, g), {"max_new_tokens", "-1"});
  g = ok;
  g.stop = {"x"};
  expect_bad_input(submit({1}, g), {"stop", "tokenizer"});
  g = ok;
  g.sampling.temperature = -0.5;
  expect_bad_input(submit({1}, g), {"temperature", "-0.5"});
  g = ok;
  g.sampling.top_p = 0;
  expect_bad_input(submit({1}, g), {"top_p"});
  g = ok;
  g.eos_id = 512;
  expect_bad_input(submit({1}, g), {"eos_id", "512"});
  {
    Engine with_tokenizer(*model_, tokenizer_, EngineOptions{});
    GenerationOptions empty_stop = ok;
    empty_stop.stop = {""};
    expect_bad_input([&] { with_tokenizer.submit(request({1}, empty_stop)); }, {"stop", "empty"});
  }
  EXPECT_EQ(engine.metrics().requests_total, 0);

  EngineOptions bad;
  bad.max_batch = 0;
  expect_bad_input([&] { Engine e(*model_, nullptr, bad); }, {"max_batch", "0"});
}

TEST_F(EngineTest, AFullQueueRefusesAtOnce) {
  EngineOptions options;
  options.max_batch = 1;
  options.max_queue = 2;
  Engine engine(*model_, nullptr, options);
  GenerationOptions g = varied_options(0, false);
  g.max_new_tokens = 2000;
  std::vector<std::shared_ptr<Stream>> accepted;
  bool refused = false;
  for (int i = 0; i < 50 && !refused; ++i) {
    std::shared_ptr<Stream> s = engine.submit(request({1, 2}, g));
    if (s) accepted.push_back(s);
    refused = s == nullptr;
  }
  EXPECT_TRUE(refused);
  EXPECT_LE(accepted.size(), 3u + 1u);  // one running, two waiting (one more if admitted between submits)
  EXPECT_EQ(engine.metrics().requests_rejected, 1);
  for (auto& s : accepted) s->cancel();
  for (auto& s : accepted) EXPECT_EQ(collect(*s).error, "cancelled");
  EXPECT_EQ(settled_metrics(engine).requests_cancelled, int64_t(accepted.size()));
}

TEST_F(EngineTest, CancellingSomeStreamsLeavesTheOthersUnchanged) {
  // Slots 0 and 2 are cancelled mid-run: later sequences move into their slots.
  std::vector<CompletionRequest> requests;
  std::vector<Completion> expected;
  for (int i = 0; i < 8; ++i) {
    GenerationOptions g = varied_options(1 + 2 * (i % 2), false);  // sampled
    g.max_new_tokens = i % 2 == 0 && i < 4 ? 60000 : 100;
    requests.push_back(request(random_ids(size_t(3 + i), uint64_t(500 + i), 512), g));
    if (g.max_new_tokens == 100) expected.push_back(solo(*model_, nullptr, requests.back().prompt, g));
  }
  Engine engine(*model_, nullptr, EngineOptions{});
  std::vector<std::shared_ptr<Stream>> streams;
  for (const auto& r : requests) streams.push_back(engine.submit(r));
  while (drain(*streams[2]) == 0) std::this_thread::sleep_for(std::chrono::microseconds(100));
  streams[0]->cancel();
  streams[2]->cancel();
  EXPECT_EQ(collect(*streams[0]).error, "cancelled");
  EXPECT_EQ(collect(*streams[2]).error, "cancelled");
  size_t next_expected = 0;
  for (size_t i = 0; i < streams.size(); ++i)
    if (i != 0 && i != 2) expect_same(collect(*streams[i]), expected[next_expected++], "request " + std::to_string(i));
  EXPECT_EQ(settled_metrics(engine).requests_cancelled, 2);
}

TEST_F(EngineTest, ALongPromptPrefillsInChunksWhileOthersDecode) {
  EngineOptions options;
  options.cache_every = 64;
  options.prefill_chunk_tokens = 64;
  Engine engine(*model_, nullptr, options);
  GenerationOptions endless = varied_options(0, false);
  endless.max_new_tokens = 60000;
  const std::shared_ptr<Stream> decoding = engine.submit(request({1, 2, 3}, endless));
  while (drain(*decoding) == 0) std::this_thread::sleep_for(1ms);
  GenerationOptions one = varied_options(0, false);
  one.max_new_tokens = 1;
  const Outcome long_prompt = collect(*engine.submit(request(random_ids(2048, 9, 512), one)));  // 32 pieces
  EXPECT_EQ(long_prompt.ids.size(), 1u) << long_prompt.error;
  EXPECT_GE(drain(*decoding), 31u) << "the running stream should step once per prefill piece";
  decoding->cancel();
  EXPECT_EQ(collect(*decoding).error, "cancelled");
}

TEST_F(EngineTest, AFailingRequestEndsAloneAndTheEngineGoesOn) {
  // A model whose vocabulary is larger than the tokenizer's: decoding an id >= 2000 throws inside
  // the engine loop, for that request only.
  MambaModel model = MambaModel::random(small_shape(4000), 13);
  const int64_t tokenizer_vocab = tokenizer_->vocab_size();
  ASSERT_LT(tokenizer_vocab, 4000);
  GenerationOptions greedy = varied_options(0, false);
  greedy.max_new_tokens = 3;
  GenerationOptions hot = varied_options(1, false);
  hot.sampling.temperature = 2.0;
  hot.max_new_tokens = 24;
  auto all_below = [&](const Completion& c) {
    return std::all_of(c.ids.begin(), c.ids.end(), [&](int32_t id) { return id < tokenizer_vocab; });
  };
  std::vector<int32_t> good, bad;
  for (int32_t p = 0; p < 200 && (good.empty() || bad.empty()); ++p) {
    if (good.empty() && all_below(solo(model, nullptr, {p}, greedy))) good = {p};
    if (bad.empty() && !all_below(solo(model, nullptr, {p}, hot))) bad = {p};
  }
  ASSERT_FALSE(good.empty());
  ASSERT_FALSE(bad.empty());
  const Completion expected = solo(model, tokenizer_, good, greedy);

  Engine engine(model, tokenizer_, EngineOptions{});
  const std::shared_ptr<Stream> failing = engine.submit(request(bad, hot));
  const std::shared_ptr<Stream> fine = engine.submit(request(good, greedy));
  const Outcome failed = collect(*failing);
  EXPECT_NE(failed.error.find("is not in the vocabulary"), std::string::npos) << failed.error;
  expect_same(collect(*fine), expected, "the request beside the failing one");
  expect_same(collect(*engine.submit(request(good, greedy))), expected, "a request after it");
  EXPECT_EQ(settled_metrics(engine).requests_failed, 1);
}

TEST_F(EngineTest, DestructionEndsOpenStreamsWithAnError) {
  std::vector<std::shared_ptr<Stream>> streams;
  {
    EngineOptions options;
    options.max_batch = 2;
    Engine engine(*model_, nullptr, options);
    GenerationOptions endless = varied_options(0, false);
    endless.max_new_tokens = 60000;
    for (int i = 0; i < 4; ++i) streams.push_back(engine.submit(request({int32_t(i + 1)}, endless)));
    while (drain(*streams[0]) == 0) std::this_thread::sleep_for(1ms);
  }
  for (auto& s : streams) {
    const Outcome out = collect(*s, 5s);
    EXPECT_NE(out.error.find("shutting down"), std::string::npos) << s->id() << ": " << out.error;
  }
}

}  // namespace
}  // namespace mambacpp::serve
