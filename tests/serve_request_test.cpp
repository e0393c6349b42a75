// The HTTP API's request parser and reply format (src/serve/request.h, prometheus.h): a scripted
// list of malformed requests, each of which must be refused with 400 naming the field at fault
// (run through the parser, and a subset through a real server on loopback); valid requests giving
// the engine request they describe; the reply and stream-chunk JSON.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "model/mamba_model.h"
#include "serve/engine.h"
#include "serve/http_server.h"
#include "serve/request.h"
#include "serve/saved_state.h"
#include "test_support.h"
#include "text/tokenizer.h"

namespace mambacpp::serve {
namespace {

using nlohmann::json;
using testing::test_data;

enum class Endpoint { Completions, StateLoad, Tokenize, Detokenize, StateSave };

const char* path_of(Endpoint e) {
  switch (e) {
    case Endpoint::Completions: return "/v1/completions";
    case Endpoint::StateLoad: return "/v1/state/load";
    case Endpoint::Tokenize: return "/tokenize";
    case Endpoint::Detokenize: return "/detokenize";
    case Endpoint::StateSave: return "/v1/state/save";
  }
  return "";
}

struct BadCase {
  std::string name;
  std::string body;
  std::string param;  // the field the error must name ("" = the body as a whole: param null)
  Endpoint endpoint = Endpoint::Completions;
  bool with_tokenizer = true;
};

// The model's limits in these tests: the fixture model's vocabulary (512) with the fixture
// tokenizer (2000 tokens), short prompts.
RequestLimits test_limits() {
  RequestLimits limits;
  limits.vocab_size = 512;
  limits.max_prompt_tokens = 64;
  limits.max_new_tokens = 256;
  return limits;
}

std::string ids_array(int n) {
  std::string s = "[";
  for (int i = 0; i < n; ++i) s += (i ? "," : "") + std::to_string(5 + i % 100);
  return s + "]";
}

std::string nested_arrays(int depth) { return std::string(size_t(depth), '[') + "1" + std::string(size_t(depth), ']'); }

std::string stop_array(int n) {
  std::string s = "[";
  for (int i = 0; i < n; ++i) s += std::string(i ? "," : "") + "\"s" + std::to_string(i) + "\"";
  return s + "]";
}

const std::vector<BadCase>& bad_cases() {
  static const std::vector<BadCase> cases = {
      // The body as a whole.
      {"empty body", "", ""},
      {"unterminated object", "{", ""},
      {"array at top level", "[1, 2]", ""},
      {"string at top level", "\"prompt\"", ""},
      {"null at top level", "null", ""},
      {"not JSON at all", "prompt=hello", ""},
      // Malformed JSON inside a field names the field.
      {"trailing comma", R"({"prompt": "a",})", "prompt"},
      {"invalid UTF-8 byte in the prompt", "{\"prompt\": \"a\xff b\"}", "prompt"},
      {"overlong UTF-8 in the prompt", "{\"prompt\": \"\xc0\xaf\"}", "prompt"},
      {"lone surrogate escape in the prompt", R"({"prompt": "\ud800"})", "prompt"},
      {"unterminated string", R"({"max_tokens": 4, "prompt": "abc)", "prompt"},
      {"bad literal", R"({"prompt": [1], "stream": tru})", "stream"},
      {"duplicate field", R"({"prompt": "a", "prompt": "b"})", "prompt"},
      {"nesting too deep", "{\"prompt\": " + nested_arrays(40) + "}", "prompt"},
      {"invalid UTF-8 in a stop string", "{\"prompt\": [1], \"stop\": \"\xe2\x82\"}", "stop"},
      // prompt
      {"no prompt", "{}", "prompt"},
      {"prompt is a number", R"({"prompt": 5})", "prompt"},
      {"prompt is a boolean", R"({"prompt": true})", "prompt"},
      {"prompt is an object", R"({"prompt": {"text": "a"}})", "prompt"},
      {"empty prompt text", R"({"prompt": ""})", "prompt"},
      {"empty prompt ids", R"({"prompt": []})", "prompt"},
      {"two text prompts", R"({"prompt": ["a", "b"]})", "prompt"},
      {"two id prompts", R"({"prompt": [[1, 2], [3]]})", "prompt"},
      {"mixed ids and text", R"({"prompt": [1, "a"]})", "prompt"},
      {"id at the vocabulary size", R"({"prompt": [1, 512]})", "prompt"},
      {"negative id", R"({"prompt": [-1]})", "prompt"},
      {"fractional id", R"({"prompt": [1.5]})", "prompt"},
      {"huge id", R"({"prompt": [18446744073709551615]})", "prompt"},
      {"too many ids", "{\"prompt\": " + ids_array(65) + "}", "prompt"},
      {"text over the token limit", "{\"prompt\": \"" + std::string(300, 'x') + " " + std::string(300, 'q') + "\"}",
       "prompt"},
      {"text whose ids exceed the model's vocabulary", R"({"prompt": "Hello, world!"})", "prompt"},
      {"text prompt without a tokenizer", R"({"prompt": "hi"})", "prompt", Endpoint::Completions, false},
      // max_tokens
      {"negative max_tokens", R"({"prompt": [1], "max_tokens": -1})", "max_tokens"},
      {"absurd max_tokens", R"({"prompt": [1], "max_tokens": 1000000000})", "max_tokens"},
      {"max_tokens beyond int64", R"({"prompt": [1], "max_tokens": 9223372036854775808})", "max_tokens"},
      {"max_tokens as a string", R"({"prompt": [1], "max_tokens": "16"})", "max_tokens"},
      {"fractional max_tokens", R"({"prompt": [1], "max_tokens": 1.5})", "max_tokens"},
      // sampling
      {"negative temperature", R"({"prompt": [1], "temperature": -0.1})", "temperature"},
      {"temperature as a string", R"({"prompt": [1], "temperature": "hot"})", "temperature"},
      {"infinite temperature", R"({"prompt": [1], "temperature": 1e400})", "temperature"},
      {"top_p zero", R"({"prompt": [1], "top_p": 0})", "top_p"},
      {"top_p above one", R"({"prompt": [1], "top_p": 1.5})", "top_p"},
      {"top_p as an array", R"({"prompt": [1], "top_p": [0.5]})", "top_p"},
      {"negative top_k", R"({"prompt": [1], "top_k": -1})", "top_k"},
      {"fractional top_k", R"({"prompt": [1], "top_k": 2.5})", "top_k"},
      {"min_p one", R"({"prompt": [1], "min_p": 1})", "min_p"},
      {"negative min_p", R"({"prompt": [1], "min_p": -0.5})", "min_p"},
      {"zero repetition_penalty", R"({"prompt": [1], "repetition_penalty": 0})", "repetition_penalty"},
      {"negative repetition_penalty", R"({"prompt": [1], "repetition_penalty": -2})", "repetition_penalty"},
      {"repetition_penalty as a boolean", R"({"prompt": [1], "repetition_penalty": false})", "repetition_penalty"},
      {"negative seed", R"({"prompt": [1], "seed": -1})", "seed"},
      {"seed as a string", R"({"prompt": [1], "seed": "42"})", "seed"},
      {"fractional seed", R"({"prompt": [1], "seed": 1.5})", "seed"},
      {"seed of 2^64", R"({"prompt": [1], "seed": 18446744073709551616})", "seed"},
      // stop
      {"stop as a number", R"({"prompt": [1], "stop": 5})", "stop"},
      {"empty stop string", R"({"prompt": [1], "stop": ""})", "stop"},
      {"stop array with a number", R"({"prompt": [1], "stop": ["a", 3]})", "stop"},
      {"too many stop strings", "{\"prompt\": [1], \"stop\": " + stop_array(17) + "}", "stop"},
      {"stop string too long", "{\"prompt\": [1], \"stop\": \"" + std::string(2000, 'z') + "\"}", "stop"},
      {"stop without a tokenizer", R"({"prompt": [1], "stop": "x"})", "stop", Endpoint::Completions, false},
      // flags
      {"stream as a string", R"({"prompt": [1], "stream": "yes"})", "stream"},
      {"stream as a number", R"({"prompt": [1], "stream": 1})", "stream"},
      {"return_tokens as a string", R"({"prompt": [1], "return_tokens": "true"})", "return_tokens"},
      {"ignore_eos as a number", R"({"prompt": [1], "ignore_eos": 0})", "ignore_eos"},
      // OpenAI fields this server does not implement
      {"n of two", R"({"prompt": [1], "n": 2})", "n"},
      {"n as a string", R"({"prompt": [1], "n": "1"})", "n"},
      {"best_of three", R"({"prompt": [1], "best_of": 3})", "best_of"},
      {"echo", R"({"prompt": [1], "echo": true})", "echo"},
      {"echo as a string", R"({"prompt": [1], "echo": "no"})", "echo"},
      {"logprobs", R"({"prompt": [1], "logprobs": 5})", "logprobs"},
      {"suffix", R"({"prompt": [1], "suffix": "end"})", "suffix"},
      {"presence_penalty", R"({"prompt": [1], "presence_penalty": 0.5})", "presence_penalty"},
      {"frequency_penalty as a string", R"({"prompt": [1], "frequency_penalty": "a"})", "frequency_penalty"},
      {"logit_bias", R"({"prompt": [1], "logit_bias": {"1": 5}})", "logit_bias"},
      {"logit_bias as an array", R"({"prompt": [1], "logit_bias": [1]})", "logit_bias"},
      {"stream_options as a number", R"({"prompt": [1], "stream_options": 5})", "stream_options"},
      {"stream_options.include_usage as a string", R"({"prompt": [1], "stream_options": {"include_usage": "y"}})",
       "stream_options.include_usage"},
      {"user as a number", R"({"prompt": [1], "user": 5})", "user"},
      {"model as a number", R"({"prompt": [1], "model": 5})", "model"},
      // state ids: never a path
      {"state_id that is a path", R"({"prompt": [1], "state_id": "../../etc/passwd"})", "state_id"},
      {"state_id with upper-case hex", "{\"state_id\": \"st-" + std::string(32, 'A') + "\"}", "state_id"},
      {"state_id too short", R"({"state_id": "st-abc"})", "state_id"},
      {"state_id as a number", R"({"state_id": 5})", "state_id"},
      {"state load without state_id", R"({"prompt": [1]})", "state_id", Endpoint::StateLoad},
      {"state save without id", "{}", "id", Endpoint::StateSave},
      {"state save with a path", R"({"id": "../cmpl-1"})", "id", Endpoint::StateSave},
      {"state save with a number", R"({"id": 7})", "id", Endpoint::StateSave},
      {"state save with a state id", "{\"id\": \"st-" + std::string(32, 'a') + "\"}", "id", Endpoint::StateSave},
      // tokenize / detokenize
      {"tokenize without content", "{}", "content", Endpoint::Tokenize},
      {"tokenize a number", R"({"content": 5})", "content", Endpoint::Tokenize},
      {"tokenize without a tokenizer", R"({"content": "a"})", "content", Endpoint::Tokenize, false},
      {"detokenize without tokens", "{}", "tokens", Endpoint::Detokenize},
      {"detokenize a string", R"({"tokens": "1,2"})", "tokens", Endpoint::Detokenize},
      {"detokenize an id outside the tokenizer", R"({"tokens": [1, 2000]})", "tokens", Endpoint::Detokenize},
      {"detokenize a negative id", R"({"tokens": [-3]})", "tokens", Endpoint::Detokenize},
  };
  return cases;
}

const Tokenizer& fixture_tokenizer() {
  static const Tokenizer tokenizer = Tokenizer::from_file(test_data("tokenizer/tokenizer.json"));
  return tokenizer;
}

// Runs one body through the parser the endpoint uses.
void parse_for(Endpoint endpoint, const std::string& body, const Tokenizer* tokenizer) {
  const RequestLimits limits = test_limits();
  const json j = parse_body(body, limits);
  switch (endpoint) {
    case Endpoint::Completions: parse_completion(j, tokenizer, 0, limits); return;
    case Endpoint::StateLoad: parse_completion(j, tokenizer, 0, limits, true); return;
    case Endpoint::Tokenize: parse_tokenize(j, tokenizer, limits); return;
    case Endpoint::Detokenize: parse_detokenize(j, tokenizer, limits); return;
    case Endpoint::StateSave: parse_state_save(j); return;
  }
}

// Checks an error body: {"error": {"message": non-empty, "type": "invalid_request_error", "param": ...}}.
void expect_error_body(const std::string& body, const std::string& param, const std::string& context) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    ADD_FAILURE() << context << ": error body is not JSON: " << body;
    return;
  }
  ASSERT_TRUE(j.contains("error") && j["error"].is_object()) << context << ": " << body;
  const json& e = j["error"];
  EXPECT_EQ(e.value("type", ""), "invalid_request_error") << context;
  EXPECT_FALSE(e.value("message", "").empty()) << context;
  if (param.empty())
    EXPECT_TRUE(e["param"].is_null()) << context << ": " << body;
  else
    EXPECT_EQ(e["param"], param) << context << ": " << body;
}

TEST(ServeRequest, ScriptedMalformedRequestsAreRefusedNamingTheField) {
  ASSERT_GE(bad_cases().size(), 50u);
  for (const BadCase& c : bad_cases()) {
    SCOPED_TRACE(c.name);
    try {
      parse_for(c.endpoint, c.body, c.with_tokenizer ? &fixture_tokenizer() : nullptr);
      ADD_FAILURE() << c.name << ": accepted";
    } catch (const RequestError& e) {
      EXPECT_EQ(e.status(), 400) << c.name;
      EXPECT_EQ(e.param(), c.param) << c.name << ": " << e.what();
      if (!c.param.empty())
        EXPECT_NE(std::string(e.what()).find(c.param), std::string::npos) << "message does not name the field: " << e.what();
      expect_error_body(error_body(e), c.param, c.name);
    } catch (const std::exception& e) {
      ADD_FAILURE() << c.name << ": threw something other than a RequestError: " << e.what();
    }
  }
}

// Every third case again through a real server on loopback: same status, same field.
TEST(ServeRequest, ASubsetOverLoopbackGivesTheSameErrors) {
  MambaModel model = MambaModel::load(test_data("hf-tiny-mamba"));
  const RequestLimits limits = test_limits();
  EngineOptions engine_options;
  engine_options.max_prompt_tokens = limits.max_prompt_tokens;
  engine_options.max_new_tokens_limit = limits.max_new_tokens;
  Engine engine(model, &fixture_tokenizer(), engine_options);
  ServerOptions server_options;
  server_options.port = 0;
  HttpServer server(engine, ServedModel{"tiny", limits.vocab_size, 0, &fixture_tokenizer()}, server_options);
  httplib::Client client("127.0.0.1", server.start());
  int sent = 0;
  for (size_t i = 0; i < bad_cases().size(); i += 3) {
    const BadCase& c = bad_cases()[i];
    if (!c.with_tokenizer) continue;
    SCOPED_TRACE(c.name);
    const httplib::Result r = client.Post(path_of(c.endpoint), c.body, "application/json");
    ASSERT_TRUE(r) << c.name << ": no response";
    EXPECT_EQ(r->status, 400) << c.name << ": " << r->body;
    expect_error_body(r->body, c.param, c.name);
    ++sent;
  }
  EXPECT_GE(sent, 25);
  // The server is still there.
  const httplib::Result health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

CompletionParams parse_ok(const std::string& body, const Tokenizer* tokenizer = &fixture_tokenizer(),
                          std::optional<int32_t> eos = 0) {
  const RequestLimits limits = test_limits();
  return parse_completion(parse_body(body, limits), tokenizer, eos, limits);
}

TEST(ServeRequest, PromptFormsGiveTheSameIds) {
  const std::vector<int32_t> expected = fixture_tokenizer().encode("Hello, hi");
  ASSERT_EQ(expected, (std::vector<int32_t>{41, 468, 80, 13, 288, 74}));  // tests/data/tokenizer: all < 512
  EXPECT_EQ(parse_ok(R"({"prompt": "Hello, hi"})").request.prompt, expected);
  EXPECT_EQ(parse_ok(R"({"prompt": ["Hello, hi"]})").request.prompt, expected);
  EXPECT_EQ(parse_ok(R"({"prompt": [41, 468, 80, 13, 288, 74]})").request.prompt, expected);
  EXPECT_EQ(parse_ok(R"({"prompt": [[41, 468, 80, 13, 288, 74]]})").request.prompt, expected);
  EXPECT_EQ(parse_ok(R"({"prompt": [7]})", nullptr).request.prompt, std::vector<int32_t>{7});
  EXPECT_EQ(parse_ok("{\"prompt\": " + ids_array(64) + "}").request.prompt.size(), 64u);  // exactly the limit
}

TEST(ServeRequest, DefaultsAreThoseOfGenerateWithOpenAIsMaxTokens) {
  const CompletionParams p = parse_ok(R"({"prompt": [1], "some_vendor_field": {"x": [1, 2]}})");
  const GenerationOptions& g = p.request.generation;
  EXPECT_EQ(g.max_new_tokens, 16);
  const SamplingParams defaults;
  EXPECT_EQ(g.sampling.temperature, defaults.temperature);
  EXPECT_EQ(g.sampling.top_k, defaults.top_k);
  EXPECT_EQ(g.sampling.top_p, defaults.top_p);
  EXPECT_EQ(g.sampling.min_p, defaults.min_p);
  EXPECT_EQ(g.sampling.repetition_penalty, defaults.repetition_penalty);
  EXPECT_FALSE(p.seed_given);
  EXPECT_EQ(g.eos_id, std::optional<int32_t>(0));
  EXPECT_TRUE(g.stop.empty());
  EXPECT_FALSE(p.stream);
  EXPECT_FALSE(p.return_tokens);
  EXPECT_FALSE(p.request.start_state);
  EXPECT_EQ(p.model, "");
}

TEST(ServeRequest, EveryFieldIsRead) {
  const CompletionParams p = parse_ok(R"({"prompt": [3, 4], "model": "m", "max_tokens": 0, "temperature": 0,
      "top_k": 7, "top_p": 0.5, "min_p": 0.25, "repetition_penalty": 1.5, "seed": 18446744073709551615,
      "stop": ["ab", "\n"], "stream": true, "return_tokens": true, "ignore_eos": true, "n": 1, "best_of": 1,
      "echo": false, "logprobs": null, "suffix": "", "presence_penalty": 0, "frequency_penalty": 0.0,
      "logit_bias": {}, "stream_options": {"include_usage": true}, "user": "u"})");
  const GenerationOptions& g = p.request.generation;
  EXPECT_EQ(p.request.prompt, (std::vector<int32_t>{3, 4}));
  EXPECT_EQ(p.model, "m");
  EXPECT_EQ(g.max_new_tokens, 0);
  EXPECT_EQ(g.sampling.temperature, 0.0);
  EXPECT_EQ(g.sampling.top_k, 7);
  EXPECT_EQ(g.sampling.top_p, 0.5);
  EXPECT_EQ(g.sampling.min_p, 0.25);
  EXPECT_EQ(g.sampling.repetition_penalty, 1.5);
  EXPECT_EQ(g.sampling.seed, 18446744073709551615ull);
  EXPECT_TRUE(p.seed_given);
  EXPECT_EQ(g.stop, (std::vector<std::string>{"ab", "\n"}));
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.return_tokens);
  EXPECT_FALSE(g.eos_id);  // ignore_eos
  EXPECT_EQ(parse_ok(R"({"prompt": [1], "stop": "x"})").request.generation.stop, std::vector<std::string>{"x"});
}

TEST(ServeRequest, StateIdMakesThePromptOptional) {
  const std::string id = "st-0123456789abcdef0123456789abcdef";
  const CompletionParams p = parse_ok("{\"state_id\": \"" + id + "\"}");
  EXPECT_EQ(p.request.start_state, std::optional<std::string>(id));
  EXPECT_TRUE(p.request.prompt.empty());
  EXPECT_EQ(parse_ok("{\"state_id\": \"" + id + "\", \"prompt\": [9]}").request.prompt, std::vector<int32_t>{9});
  EXPECT_TRUE(is_state_id(id));
  EXPECT_FALSE(is_state_id(id + "0"));
  EXPECT_FALSE(is_state_id("st-0123456789abcdef0123456789abcdeg"));
  EXPECT_TRUE(is_completion_id("cmpl-1f"));
  EXPECT_FALSE(is_completion_id("cmpl-"));
  EXPECT_FALSE(is_completion_id("cmpl-1/"));
}

TEST(ServeRequest, TokenizeAndDetokenizeBodies) {
  const RequestLimits limits = test_limits();
  const Tokenizer* tok = &fixture_tokenizer();
  EXPECT_EQ(parse_tokenize(parse_body(R"({"content": "Hello, hi"})", limits), tok, limits), tok->encode("Hello, hi"));
  EXPECT_EQ(parse_tokenize(parse_body(R"({"prompt": "Hello, hi"})", limits), tok, limits), tok->encode("Hello, hi"));
  // Detokenize accepts the tokenizer's whole vocabulary, not only the model's.
  EXPECT_EQ(parse_detokenize(parse_body(R"({"tokens": [1999, 0]})", limits), tok, limits), (std::vector<int32_t>{1999, 0}));
  EXPECT_EQ(parse_state_save(parse_body(R"({"id": "cmpl-00ff"})", limits)), "cmpl-00ff");
}

TEST(ServeRequest, ReplyHasOpenAIsShape) {
  const std::vector<int32_t> tokens = {5, 6};
  const json r = completion_reply("cmpl-ab", 1700000000, "tiny", "hi", &tokens, FinishReason::Eos, {3, 2});
  EXPECT_EQ(r["id"], "cmpl-ab");
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["created"], 1700000000);
  EXPECT_EQ(r["model"], "tiny");
  ASSERT_EQ(r["choices"].size(), 1u);
  const json& c = r["choices"][0];
  EXPECT_EQ(c["text"], "hi");
  EXPECT_EQ(c["index"], 0);
  EXPECT_EQ(c["finish_reason"], "stop");
  EXPECT_TRUE(c["logprobs"].is_null());
  EXPECT_EQ(c["tokens"], json({5, 6}));
  EXPECT_EQ(r["usage"], json({{"prompt_tokens", 3}, {"completion_tokens", 2}, {"total_tokens", 5}}));
  const json no_tokens = completion_reply("cmpl-ab", 1, "m", "", nullptr, FinishReason::Length, {1, 0});
  EXPECT_FALSE(no_tokens["choices"][0].contains("tokens"));
  EXPECT_EQ(no_tokens["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(openai_finish_reason(FinishReason::StopString), "stop");
}

// "data: {json}\n\n" -> the json.
json chunk_json(const std::string& event) {
  EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
  EXPECT_EQ(event.substr(event.size() - 2), "\n\n") << event;
  return json::parse(event.substr(6, event.size() - 8));
}

TEST(ServeRequest, StreamChunksAreServerSentEvents) {
  const json mid = chunk_json(stream_chunk("cmpl-1", 5, "m", "ab\n", nullptr, std::nullopt, std::nullopt));
  EXPECT_EQ(mid["object"], "text_completion");
  EXPECT_EQ(mid["choices"][0]["text"], "ab\n");
  EXPECT_TRUE(mid["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(mid.contains("usage"));
  const std::vector<int32_t> ids = {9};
  const json last = chunk_json(stream_chunk("cmpl-1", 5, "m", "", &ids, FinishReason::Length, Usage{4, 1}));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(last["choices"][0]["tokens"], json({9}));
  EXPECT_EQ(last["usage"]["total_tokens"], 5);
  EXPECT_EQ(chunk_json(stream_error("engine stopped"))["error"]["message"], "engine stopped");
  EXPECT_EQ(kStreamDone, "data: [DONE]\n\n");
}

TEST(ServeRequest, InvalidUtf8InAnErrorMessageIsReplaced) {
  // A message quoting client bytes must still give a valid JSON body.
  const json j = json::parse(error_body("bad \xff value", "invalid_request_error", "prompt"));
  EXPECT_EQ(j["error"]["message"], "bad \xef\xbf\xbd value");
}

}  // namespace
}  // namespace mambacpp::serve
