// The HTTP server end to end, in process on loopback (port 0), with the fixture model
// tests/data/hf-tiny-mamba plus the fixture tokenizer, and a random model of the same shape
// without a tokenizer. Expected tokens come from `mambacpp generate` (the CLI) or from the
// Generator on a separate copy of the model, never from the server itself.
#include <gtest/gtest.h>

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <latch>
#include <map>
#include <memory>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "infer/generator.h"
#include "model/mamba_model.h"
#include "serve/engine.h"
#include "serve/http_server.h"
#include "serve/prometheus.h"
#include "test_support.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

namespace mambacpp::serve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::CliRun;
using testing::TempDir;
using testing::test_data;

// A model, its engine and its server, torn down in that reverse order.
struct Served {
  Served(MambaModel m, const Tokenizer* tokenizer, EngineOptions engine_options, ServerOptions server_options = {})
      : model(std::make_unique<MambaModel>(std::move(m))) {
    engine = std::make_unique<Engine>(*model, tokenizer, engine_options);
    ServedModel served{"tiny", model->config().vocab_size, std::nullopt, tokenizer};
    if (model->config().eos_token_id) served.eos_id = int32_t(*model->config().eos_token_id);
    server_options.port = 0;
    server_options.io_timeout = std::chrono::seconds(5);
    server = std::make_unique<HttpServer>(*engine, served, server_options);
    server->start();
  }
  int port() const { return server->port(); }

  std::unique_ptr<MambaModel> model;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<HttpServer> server;
};

httplib::Result post(int port, const std::string& path, const std::string& body, const httplib::Headers& headers = {}) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60);
  return client.Post(path, headers, body, "application/json");
}

httplib::Result get(int port, const std::string& path) {
  httplib::Client client("127.0.0.1", port);
  return client.Get(path);
}

// The reply of a request that must succeed.
json post_ok(int port, const std::string& path, const json& body) {
  const httplib::Result r = post(port, path, body.dump());
  EXPECT_TRUE(r) << path << ": no response";
  if (!r) return json();
  EXPECT_EQ(r->status, 200) << path << " " << body.dump() << " -> " << r->body;
  return json::parse(r->body);
}

// A streamed completion as the client saw it.
struct StreamResult {
  int status = 0;
  std::vector<json> chunks;  // the data events before [DONE]
  bool done = false;         // "data: [DONE]" arrived last
  std::string text;          // every chunk's text, concatenated
  std::vector<int32_t> tokens;
};

// POSTs with "stream": true and reads the server-sent events. `keep_reading(chunks so far)`
// returning false closes the connection at once (the client going away).
StreamResult post_stream(int port, json body, const std::function<bool(const StreamResult&)>& keep_reading = {}) {
  body["stream"] = true;
  StreamResult result;
  std::string pending;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.headers = {{"Content-Type", "application/json"}};
  req.response_handler = [&](const httplib::Response& res) {
    result.status = res.status;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    pending.append(data, size);
    for (size_t end; (end = pending.find("\n\n")) != std::string::npos; pending.erase(0, end + 2)) {
      const std::string event = pending.substr(0, end);
      EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
      EXPECT_FALSE(result.done) << "an event after [DONE]: " << event;
      if (event == "data: [DONE]") {
        result.done = true;
        continue;
      }
      json chunk = json::parse(event.substr(6));
      if (chunk.contains("choices")) {
        result.text += chunk["choices"][0]["text"].get<std::string>();
        if (chunk["choices"][0].contains("tokens"))
          for (int32_t id : chunk["choices"][0]["tokens"]) result.tokens.push_back(id);
      }
      result.chunks.push_back(std::move(chunk));
    }
    return !keep_reading || keep_reading(result);
  };
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60);
  client.send(req);
  return result;
}

std::vector<int32_t> ids_of(const json& choice) { return choice.at("tokens").get<std::vector<int32_t>>(); }

// Samples of a /metrics reply by "name{labels}", every line checked against the text format.
std::map<std::string, double> parse_exposition(const std::string& text) {
  static const std::regex comment(R"(# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+)");
  static const std::regex sample(R"(([a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"\})?) (\S+))");
  std::map<std::string, double> samples;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, comment)) continue;
    if (!std::regex_match(line, m, sample)) {
      ADD_FAILURE() << "not an exposition line: \"" << line << "\"";
      continue;
    }
    const std::string v = m[3];
    samples[m[1]] = v == "+Inf" ? INFINITY : std::stod(v);
  }
  EXPECT_TRUE(!text.empty() && text.back() == '\n');
  return samples;
}

std::map<std::string, double> scrape(int port) {
  const httplib::Result r = get(port, "/metrics");
  EXPECT_TRUE(r && r->status == 200);
  if (!r) return {};
  EXPECT_EQ(r->get_header_value("Content-Type"), kPrometheusContentType);
  return parse_exposition(r->body);
}

// Polls /metrics until `ok` holds (or 20 s pass).
bool eventually(int port, const std::function<bool(std::map<std::string, double>&)>& ok) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    auto m = scrape(port);
    if (ok(m)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

class ServeHttp : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    tokenizer_ = new Tokenizer(Tokenizer::from_file(test_data("tokenizer/tokenizer.json")));
    // The model with the tokenizer beside it, for the CLI (vocab 2000 > 512: prompts use ids < 512).
    fs::create_directory(dir_->path() / "with-tokenizer");
    for (const char* f : {"config.json", "model.safetensors"})
      fs::copy(test_data("hf-tiny-mamba") / f, dir_->path() / "with-tokenizer" / f);
    fs::copy(test_data("tokenizer/tokenizer.json"), dir_->path() / "with-tokenizer" / "tokenizer.json");
    reference_model_ = new MambaModel(MambaModel::load(test_data("hf-tiny-mamba")));
    EngineOptions options;
    options.state_dir = dir_->path() / "states";
    fs::create_directory(options.state_dir);
    served_ = new Served(MambaModel::load(test_data("hf-tiny-mamba")), tokenizer_, options);
  }
  static void TearDownTestSuite() {
    delete served_;
    delete reference_model_;
    delete tokenizer_;
    delete dir_;
  }
  static int port() { return served_->port(); }

  // What the Generator gives for one prompt, on a model the server does not use.
  static Completion reference(const std::vector<int32_t>& prompt, const GenerationOptions& options,
                              MambaModel* model = nullptr, const Tokenizer* tokenizer = tokenizer_) {
    Generator generator(model ? *model : *reference_model_, tokenizer);
    return generator.generate({prompt}, options)[0];
  }

  static TempDir* dir_;
  static Tokenizer* tokenizer_;
  static MambaModel* reference_model_;
  static Served* served_;
};

TempDir* ServeHttp::dir_ = nullptr;
Tokenizer* ServeHttp::tokenizer_ = nullptr;
MambaModel* ServeHttp::reference_model_ = nullptr;
Served* ServeHttp::served_ = nullptr;

const std::string kPrompt = "Hello, hi";  // fixture tokenizer ids 41,468,80,13,288,74: all < 512

std::vector<int32_t> split_ids(const std::string& line) {
  std::vector<int32_t> ids;
  std::stringstream in(line);
  for (std::string piece; std::getline(in, piece, ',');) ids.push_back(std::stoi(piece));
  return ids;
}

TEST_F(ServeHttp, HealthAndPlayground) {
  const httplib::Result health = get(port(), "/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(json::parse(health->body), json({{"status", "ok"}}));
  const httplib::Result page = get(port(), "/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->body.find("<html"), std::string::npos);
  const httplib::Result missing = get(port(), "/v2/nothing");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_TRUE(json::parse(missing->body).contains("error"));
}

TEST_F(ServeHttp, GreedyEqualsTheGenerateCommand) {
  const std::string model_dir = (dir_->path() / "with-tokenizer").string();
  const std::vector<std::string> common = {"generate", "--model", model_dir, "--prompt", kPrompt, "-n", "12",
                                           "--temperature", "0", "--threads", "1"};
  std::vector<std::string> with_ids = common;
  with_ids.push_back("--print-ids");
  const CliRun ids_run = testing::run_cli(with_ids);
  const CliRun text_run = testing::run_cli(common);
  ASSERT_EQ(ids_run.code, 0) << ids_run.err;
  ASSERT_EQ(text_run.code, 0) << text_run.err;
  const std::vector<int32_t> all = split_ids(ids_run.out);
  const std::vector<int32_t> prompt_ids = tokenizer_->encode(kPrompt);
  ASSERT_GT(all.size(), prompt_ids.size());
  const std::vector<int32_t> expected(all.begin() + ptrdiff_t(prompt_ids.size()), all.end());
  const std::string expected_text = text_run.out.substr(kPrompt.size(), text_run.out.size() - kPrompt.size() - 1);

  const json reply = post_ok(port(), "/v1/completions",
                             {{"prompt", kPrompt}, {"max_tokens", 12}, {"temperature", 0}, {"return_tokens", true}});
  EXPECT_EQ(ids_of(reply["choices"][0]), expected);
  EXPECT_EQ(reply["choices"][0]["text"], expected_text);
  EXPECT_EQ(reply["usage"]["prompt_tokens"], prompt_ids.size());
  EXPECT_EQ(reply["usage"]["completion_tokens"], expected.size());
  EXPECT_EQ(reply["usage"]["total_tokens"], prompt_ids.size() + expected.size());
  EXPECT_EQ(reply["object"], "text_completion");
  EXPECT_EQ(reply["model"], "tiny");
  EXPECT_EQ(reply["id"].get<std::string>().rfind("cmpl-", 0), 0u);
}

// Request i of the concurrent test: distinct prompts and settings, so a mixed-up stream shows.
struct Job {
  json body;
  std::vector<int32_t> prompt;
  GenerationOptions options;
  bool stream = true;
};

Job make_job(int i) {
  Job job;
  std::mt19937 rng(uint32_t(100 + i));
  const int length = 3 + (i * 7) % 41;
  for (int t = 0; t < length; ++t) job.prompt.push_back(int32_t(2 + rng() % 500));
  SamplingParams& s = job.options.sampling;
  s.temperature = 0.6 + 0.02 * i;
  s.top_k = 10 + i;
  s.top_p = 0.9;
  s.min_p = 0.02;
  s.repetition_penalty = i % 2 ? 1.1 : 1.0;
  s.seed = 1000 + uint64_t(i);
  job.options.max_new_tokens = 24 + i;
  if (i % 3) job.options.eos_id = 0;  // every third ignores EOS
  job.stream = i % 4 != 3;
  job.body = {{"prompt", job.prompt}, {"max_tokens", job.options.max_new_tokens}, {"temperature", s.temperature},
              {"top_k", s.top_k}, {"top_p", s.top_p}, {"min_p", s.min_p}, {"repetition_penalty", s.repetition_penalty},
              {"seed", s.seed}, {"ignore_eos", i % 3 == 0}, {"return_tokens", true}};
  return job;
}

TEST_F(ServeHttp, ThirtyTwoConcurrentStreamsEachEqualTheirSoloRun) {
  constexpr int kJobs = 32;
  std::vector<Job> jobs;
  // Job 0 is the greedy text prompt of GreedyEqualsTheGenerateCommand.
  Job greedy;
  greedy.prompt = tokenizer_->encode(kPrompt);
  greedy.options.sampling.temperature = 0;
  greedy.options.max_new_tokens = 12;
  greedy.options.eos_id = 0;
  greedy.body = {{"prompt", kPrompt}, {"max_tokens", 12}, {"temperature", 0}, {"return_tokens", true}};
  jobs.push_back(greedy);
  for (int i = 1; i < kJobs; ++i) jobs.push_back(make_job(i));

  const double batches_before = scrape(port())["mambacpp_batch_size_count"];
  std::vector<std::vector<int32_t>> tokens(kJobs);
  std::vector<std::string> texts(kJobs);
  std::vector<int> statuses(kJobs);
  std::latch start(kJobs);
  std::vector<std::thread> threads;
  for (int i = 0; i < kJobs; ++i)
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      if (jobs[size_t(i)].stream) {
        const StreamResult r = post_stream(port(), jobs[size_t(i)].body);
        statuses[size_t(i)] = r.done ? r.status : -1;
        tokens[size_t(i)] = r.tokens;
        texts[size_t(i)] = r.text;
      } else {
        const httplib::Result r = post(port(), "/v1/completions", jobs[size_t(i)].body.dump());
        statuses[size_t(i)] = r ? r->status : -1;
        if (r && r->status == 200) {
          const json reply = json::parse(r->body);
          tokens[size_t(i)] = ids_of(reply["choices"][0]);
          texts[size_t(i)] = reply["choices"][0]["text"];
        }
      }
    });
  for (auto& t : threads) t.join();

  for (int i = 0; i < kJobs; ++i) {
    const Completion expected = reference(jobs[size_t(i)].prompt, jobs[size_t(i)].options);
    EXPECT_EQ(statuses[size_t(i)], 200) << "request " << i;
    EXPECT_EQ(tokens[size_t(i)], expected.ids) << "request " << i;
    // A random model emits bytes that do not make UTF-8; the JSON text carries U+FFFD for them.
    EXPECT_EQ(texts[size_t(i)], text::replace_invalid_utf8(expected.text)) << "request " << i;
  }
  // The requests really shared decode steps: some step ran more than one sequence.
  const auto m = scrape(port());
  EXPECT_LT(m.at("mambacpp_batch_size_bucket{le=\"1\"}"), m.at("mambacpp_batch_size_count"));
  EXPECT_GT(m.at("mambacpp_batch_size_count"), batches_before);
}

TEST_F(ServeHttp, StreamedChunksConcatenateToTheWholeReply) {
  const json body = {{"prompt", kPrompt}, {"max_tokens", 20}, {"temperature", 1.0}, {"seed", 7}, {"ignore_eos", true},
                     {"return_tokens", true}, {"stop", "\x01never"}};
  const json whole = post_ok(port(), "/v1/completions", body);
  const StreamResult streamed = post_stream(port(), body);
  EXPECT_EQ(streamed.status, 200);
  ASSERT_TRUE(streamed.done);
  ASSERT_GE(streamed.chunks.size(), 2u);
  EXPECT_EQ(streamed.text, whole["choices"][0]["text"]);
  EXPECT_EQ(streamed.tokens, ids_of(whole["choices"][0]));
  EXPECT_EQ(streamed.tokens.size(), 20u);
  const json& last = streamed.chunks.back();
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(last["usage"], whole["usage"]);
  EXPECT_EQ(whole["usage"]["completion_tokens"], 20);
  EXPECT_EQ(whole["usage"]["prompt_tokens"], 6);
  for (size_t i = 0; i + 1 < streamed.chunks.size(); ++i) {
    EXPECT_TRUE(streamed.chunks[i]["choices"][0]["finish_reason"].is_null());
    EXPECT_FALSE(streamed.chunks[i].contains("usage"));
    EXPECT_EQ(streamed.chunks[i]["id"], last["id"]);
    EXPECT_EQ(streamed.chunks[i]["object"], "text_completion");
  }
}

TEST_F(ServeHttp, StopStringEndsWithStop) {
  json body = {{"prompt", kPrompt}, {"max_tokens", 8}, {"temperature", 1.0}, {"seed", 3}, {"ignore_eos", true}};
  const std::string text = post_ok(port(), "/v1/completions", body)["choices"][0]["text"];
  // The first printable ASCII character after the start: text up to its first occurrence remains.
  size_t j = 1;
  while (j < text.size() && !(text[j] > ' ' && text[j] < 127)) ++j;
  // The fixture model and seed are fixed, so this holds unless the fixture changes.
  ASSERT_LT(j, text.size()) << "the seeded completion has no ASCII character to stop at: " << text;
  body["stop"] = {std::string(1, text[j]), "\x02unused"};
  const json stopped = post_ok(port(), "/v1/completions", body);
  EXPECT_EQ(stopped["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(stopped["choices"][0]["text"], text.substr(0, text.find(text[j])));
}

TEST_F(ServeHttp, MetricsCountRequestsAndTokens) {
  const auto before = scrape(port());
  int64_t generated = 0;
  for (int i = 0; i < 3; ++i) {
    const json r = post_ok(port(), "/v1/completions", {{"prompt", {5, 6, 7}}, {"max_tokens", 4 + i}, {"ignore_eos", true}});
    generated += r["usage"]["completion_tokens"].get<int64_t>();
  }
  EXPECT_EQ(generated, 4 + 5 + 6);
  const auto after = scrape(port());
  EXPECT_EQ(after.at("mambacpp_requests_total") - before.at("mambacpp_requests_total"), 3);
  EXPECT_EQ(after.at("mambacpp_prompt_tokens_total") - before.at("mambacpp_prompt_tokens_total"), 9);
  EXPECT_EQ(after.at("mambacpp_generated_tokens_total") - before.at("mambacpp_generated_tokens_total"), generated);
  EXPECT_EQ(after.at("mambacpp_time_to_first_token_seconds_count") -
                before.at("mambacpp_time_to_first_token_seconds_count"), 3);
  // 3 completions + the first scrape. A response is counted once it has been sent, which can be
  // just after its client returned: wait for the count rather than read it once.
  const double ok_before = before.at("mambacpp_http_responses_total{code=\"200\"}");
  EXPECT_TRUE(eventually(port(), [&](auto& m) { return m["mambacpp_http_responses_total{code=\"200\"}"] - ok_before >= 4; }));
  for (const char* name : {"mambacpp_requests_running", "mambacpp_queue_length", "mambacpp_state_cache_hits_total",
                           "mambacpp_time_per_output_token_seconds_sum", "mambacpp_batch_size_bucket{le=\"+Inf\"}"})
    EXPECT_EQ(after.count(name), 1u) << name;
  // Histograms are cumulative and end with +Inf = count.
  EXPECT_EQ(after.at("mambacpp_time_to_first_token_seconds_bucket{le=\"+Inf\"}"),
            after.at("mambacpp_time_to_first_token_seconds_count"));
}

TEST_F(ServeHttp, StateSaveAndLoadContinueTheSequence) {
  const std::vector<int32_t> p = {11, 12, 13, 14}, q = {21, 22};
  const json greedy = {{"temperature", 0}, {"max_tokens", 6}, {"ignore_eos", true}, {"return_tokens", true}};
  json first_body = greedy;
  first_body["prompt"] = p;
  const json first = post_ok(port(), "/v1/completions", first_body);
  const std::vector<int32_t> a = ids_of(first["choices"][0]);
  ASSERT_EQ(a.size(), 6u);
  const json saved = post_ok(port(), "/v1/state/save", {{"id", first["id"]}});
  const std::string state_id = saved["state_id"];
  EXPECT_TRUE(std::regex_match(state_id, std::regex("st-[0-9a-f]{32}"))) << state_id;

  json load_body = greedy;
  load_body["prompt"] = q;
  load_body["state_id"] = state_id;
  const json continued = post_ok(port(), "/v1/state/load", load_body);
  // A cold run over everything the state holds, then q.
  std::vector<int32_t> all = p;
  all.insert(all.end(), a.begin(), a.end());
  all.insert(all.end(), q.begin(), q.end());
  GenerationOptions options;
  options.sampling.temperature = 0;
  options.max_new_tokens = 6;
  EXPECT_EQ(ids_of(continued["choices"][0]), reference(all, options).ids);
  // The same through /v1/completions with state_id.
  EXPECT_EQ(ids_of(post_ok(port(), "/v1/completions", load_body)["choices"][0]), ids_of(continued["choices"][0]));

  const httplib::Result unknown = post(port(), "/v1/state/load", json({{"state_id", "st-" + std::string(32, '0')}}).dump());
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 400);
  EXPECT_EQ(json::parse(unknown->body)["error"]["param"], "state_id");
  const httplib::Result unsaved = post(port(), "/v1/state/save", R"({"id": "cmpl-0123"})");
  ASSERT_TRUE(unsaved);
  EXPECT_EQ(unsaved->status, 400);
  EXPECT_EQ(json::parse(unsaved->body)["error"]["param"], "id");
}

TEST_F(ServeHttp, TokenizeAndDetokenizeRoundTrip) {
  const std::string text = "Hello, world! It's 42 \xc3\xbc" "n\xc3\xaf" "code \xe2\x9c\x93";
  const json tokens = post_ok(port(), "/tokenize", {{"content", text}});
  EXPECT_EQ(tokens["tokens"].get<std::vector<int32_t>>(), tokenizer_->encode(text));
  EXPECT_EQ(post_ok(port(), "/detokenize", {{"tokens", tokens["tokens"]}})["content"], text);
}

TEST_F(ServeHttp, OversizedBodyIsRefused) {
  const httplib::Result r = post(port(), "/v1/completions", std::string((1 << 20) + 1, ' '));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_TRUE(json::parse(r->body).contains("error"));
}

// A server with one batch slot, one queue place and an API key.
class ServeHttpLimited : public ServeHttp {
 protected:
  static void SetUpTestSuite() {
    ServeHttp::SetUpTestSuite();
    EngineOptions options;
    options.max_batch = 1;
    options.max_queue = 1;
    ServerOptions server_options;
    server_options.api_key = "sekrit";
    limited_ = new Served(MambaModel::load(test_data("hf-tiny-mamba")), tokenizer_, options, server_options);
  }
  static void TearDownTestSuite() {
    delete limited_;
    ServeHttp::TearDownTestSuite();
  }
  static Served* limited_;
};
Served* ServeHttpLimited::limited_ = nullptr;

const httplib::Headers kKey = {{"Authorization", "Bearer sekrit"}};

TEST_F(ServeHttpLimited, ApiKeyIsRequiredExceptForHealth) {
  const std::string body = R"({"prompt": [5], "max_tokens": 1})";
  const httplib::Result missing = post(limited_->port(), "/v1/completions", body);
  const httplib::Result wrong = post(limited_->port(), "/v1/completions", body, {{"Authorization", "Bearer sekriT"}});
  const httplib::Result not_bearer = post(limited_->port(), "/v1/completions", body, {{"Authorization", "sekrit"}});
  const httplib::Result metrics = get(limited_->port(), "/metrics");
  for (const httplib::Result* r : {&missing, &wrong, &not_bearer, &metrics}) {
    ASSERT_TRUE(*r);
    EXPECT_EQ((*r)->status, 401);
    EXPECT_EQ(json::parse((*r)->body)["error"]["type"], "authentication_error");
  }
  const httplib::Result right = post(limited_->port(), "/v1/completions", body, kKey);
  ASSERT_TRUE(right);
  EXPECT_EQ(right->status, 200) << right->body;
  const httplib::Result health = get(limited_->port(), "/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

// Streams that run until released: the first takes the batch slot, the second the queue place;
// a third request then gets 503 at once. Releasing the clients (they disconnect) frees both.
TEST_F(ServeHttpLimited, FullQueueGives503AndDisconnectsFreeTheirSlots) {
  const int port = limited_->port();
  // The limited server needs the key for /metrics; scrape through a keyed client.
  const auto scrape_keyed = [port] {
    httplib::Client client("127.0.0.1", port);
    const httplib::Result r = client.Get("/metrics", kKey);
    return r && r->status == 200 ? parse_exposition(r->body) : std::map<std::string, double>{};
  };
  const auto wait_for = [&](const std::function<bool(std::map<std::string, double>&)>& ok) {
    for (int i = 0; i < 1000; ++i) {
      auto m = scrape_keyed();
      if (ok(m)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  };
  const double cancelled_before = scrape_keyed()["mambacpp_requests_cancelled_total"];
  std::atomic<bool> release{false};
  std::atomic<int> chunks_seen{0};
  const auto long_stream = [&] {
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.headers = {{"Content-Type", "application/json"}, {"Authorization", "Bearer sekrit"}};
    req.body = R"({"prompt": [5, 6], "max_tokens": 60000, "ignore_eos": true, "stream": true})";
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
      ++chunks_seen;
      while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return false;  // disconnect
    };
    httplib::Client client("127.0.0.1", port);
    client.set_read_timeout(60);
    client.send(req);
  };
  std::thread running(long_stream);
  ASSERT_TRUE(wait_for([](auto& m) { return m["mambacpp_requests_running"] == 1; }));
  std::thread queued(long_stream);
  ASSERT_TRUE(wait_for([](auto& m) { return m["mambacpp_queue_length"] == 1; }));

  const httplib::Result refused = post(port, "/v1/completions", R"({"prompt": [5], "max_tokens": 1})", kKey);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 503);
  EXPECT_EQ(refused->get_header_value("Retry-After"), "1");
  EXPECT_TRUE(json::parse(refused->body).contains("error"));

  release = true;  // both clients close their connections as soon as they see data
  running.join();
  queued.join();
  // Both must end cancelled: between the first leaving and the second being admitted, running and
  // queue can both read 0 for a moment, so the count is part of the condition.
  EXPECT_TRUE(wait_for([&](auto& m) {
    return m["mambacpp_requests_running"] == 0 && m["mambacpp_queue_length"] == 0 &&
           m["mambacpp_requests_cancelled_total"] - cancelled_before == 2;
  })) << "the disconnected streams still hold their slots, or were not both cancelled";
  EXPECT_EQ(scrape_keyed()["mambacpp_requests_rejected_total"], 1);
  // The slot serves again.
  const httplib::Result after = post(port, "/v1/completions", R"({"prompt": [5], "max_tokens": 2})", kKey);
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 200);
}

TEST_F(ServeHttp, ClientDisconnectingMidStreamFreesItsSlot) {
  const double cancelled_before = scrape(port())["mambacpp_requests_cancelled_total"];
  const StreamResult r = post_stream(port(), {{"prompt", {7, 8, 9}}, {"max_tokens", 60000}, {"ignore_eos", true}},
                                     [](const StreamResult& so_far) { return so_far.chunks.size() < 3; });
  EXPECT_EQ(r.status, 200);
  EXPECT_FALSE(r.done);
  EXPECT_TRUE(eventually(port(), [&](auto& m) {
    return m["mambacpp_requests_running"] == 0 && m["mambacpp_requests_cancelled_total"] == cancelled_before + 1;
  }));
}

// A random model of the fixture's shape and no tokenizer: token-id prompts only.
TEST_F(ServeHttp, ModelWithoutTokenizerServesIdPrompts) {
  const MambaConfig config = reference_model_->config();
  EngineOptions options;
  Served random(MambaModel::random(config, 77), nullptr, options);
  MambaModel twin = MambaModel::random(config, 77);
  GenerationOptions expected_options;
  expected_options.sampling.temperature = 0.9;
  expected_options.sampling.seed = 5;
  expected_options.max_new_tokens = 15;
  const Completion expected = reference({3, 1, 4, 1, 5}, expected_options, &twin, nullptr);
  const json reply = post_ok(random.port(), "/v1/completions",
                             {{"prompt", {3, 1, 4, 1, 5}}, {"max_tokens", 15}, {"temperature", 0.9}, {"seed", 5},
                              {"ignore_eos", true}, {"return_tokens", true}});
  EXPECT_EQ(ids_of(reply["choices"][0]), expected.ids);
  EXPECT_EQ(reply["choices"][0]["text"], "");
  for (const auto& [path, body, param] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"/v1/completions", R"({"prompt": "text"})", "prompt"},
           {"/v1/completions", R"({"prompt": [1], "stop": "x"})", "stop"},
           {"/tokenize", R"({"content": "text"})", "content"}}) {
    const httplib::Result r = post(random.port(), path, body);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << body;
    EXPECT_EQ(json::parse(r->body)["error"]["param"], param) << body;
  }
}

// The command: flags checked before anything loads, a URL printed once listening on a free
// port, SIGTERM ending it with exit code 0.
TEST_F(ServeHttp, ServeCommandListensAndStopsOnSigterm) {
  const std::string model = test_data("hf-tiny-mamba").string();
  const std::vector<std::pair<std::vector<std::string>, int>> refused = {
      {{"serve", "--model", model, "--device", "cuda"}, 1},
      {{"serve", "--model", model, "--max-batch", "0"}, 1},
      {{"serve", "--model", model, "--port", "65536"}, 1},
      {{"serve", "--model", model, "--port", "http"}, 2},
      {{"serve", "--model", model, "--device", "tpu"}, 2}};
  for (const auto& [args, code] : refused) {
    const CliRun r = testing::run_cli(args);
    EXPECT_EQ(r.code, code) << args[3] << " " << args[4] << ": " << r.err;
    EXPECT_NE(r.err.find(args[3]), std::string::npos) << r.err;
  }

  const fs::path out = dir_->path() / "serve.out";
  std::vector<std::string> args = {MAMBACPP_CLI, "serve", "--model", model, "--port", "0", "--threads", "1",
                                   "--state-dir", (dir_->path() / "cli-states").string()};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, MAMBACPP_CLI, &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  std::smatch url;
  std::string printed;
  const std::regex listening(R"(listening on http://127\.0\.0\.1:([0-9]+))");
  for (int i = 0; i < 1500 && !std::regex_search(printed, url, listening); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    printed = testing::read_text(out);
  }
  bool healthy = false;
  if (!url.empty()) {
    const httplib::Result health = get(std::stoi(url[1]), "/health");
    healthy = health && health->status == 200;
  }
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_FALSE(url.empty()) << "no URL printed: " << printed;
  EXPECT_TRUE(healthy);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

TEST(ServePrometheus, TextParsesAndCarriesEveryFigure) {
  EngineMetrics m;
  m.requests_total = 7;
  m.requests_rejected = 2;
  m.prompt_tokens_total = 120;
  m.generated_tokens_total = 64;
  m.cache_hits = 3;
  m.running = 4;
  m.queued = 1;
  m.time_to_first_token = {{0.01, 0.1, 1.0}, {1, 3, 4}, 0.75, 5};
  m.batch_size = {{1, 8, 32}, {2, 2, 6}, 40, 6};
  const std::string text = prometheus_text(m, {{200, 9}, {503, 2}});
  std::map<std::string, double> s = parse_exposition(text);
  EXPECT_EQ(s["mambacpp_requests_total"], 7);
  EXPECT_EQ(s["mambacpp_requests_rejected_total"], 2);
  EXPECT_EQ(s["mambacpp_prompt_tokens_total"], 120);
  EXPECT_EQ(s["mambacpp_generated_tokens_total"], 64);
  EXPECT_EQ(s["mambacpp_state_cache_hits_total"], 3);
  EXPECT_EQ(s["mambacpp_requests_running"], 4);
  EXPECT_EQ(s["mambacpp_queue_length"], 1);
  EXPECT_EQ(s["mambacpp_time_to_first_token_seconds_bucket{le=\"0.01\"}"], 1);
  EXPECT_EQ(s["mambacpp_time_to_first_token_seconds_bucket{le=\"1\"}"], 4);
  EXPECT_EQ(s["mambacpp_time_to_first_token_seconds_bucket{le=\"+Inf\"}"], 5);
  EXPECT_EQ(s["mambacpp_time_to_first_token_seconds_sum"], 0.75);
  EXPECT_EQ(s["mambacpp_time_to_first_token_seconds_count"], 5);
  EXPECT_EQ(s["mambacpp_batch_size_bucket{le=\"32\"}"], 6);
  EXPECT_EQ(s.count("mambacpp_time_per_output_token_seconds_count"), 1u);
  EXPECT_EQ(s["mambacpp_http_responses_total{code=\"503\"}"], 2);
  EXPECT_NE(text.find("# TYPE mambacpp_batch_size histogram\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE mambacpp_requests_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE mambacpp_queue_length gauge\n"), std::string::npos);
}

}  // namespace
}  // namespace mambacpp::serve
