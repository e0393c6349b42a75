// The HTTP API's wire format, both ways, as pure functions (no I/O, no engine): request bodies
// are parsed and validated into engine requests, and replies and stream chunks are built in
// OpenAI's text_completion format. Every refusal is a RequestError carrying the HTTP status and
// the request field at fault, which the server sends as
//   {"error": {"message": ..., "type": "invalid_request_error", "param": <field or null>}}.
//
// Unknown fields are ignored (clients send vendor extensions); known fields must have their type
// and range, or the request is refused. Defaults are those of `mambacpp generate` (temperature
// 0.8, top_k 40, top_p 0.95, min_p 0.05, repetition_penalty 1) except max_tokens, 16 as in OpenAI.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "serve/engine.h"

namespace mambacpp {
class Tokenizer;
}

namespace mambacpp::serve {

// A refused request: a BadInput that also knows its HTTP status and the field at fault ("" when
// the body as a whole is at fault, e.g. malformed JSON).
class RequestError : public Error {
 public:
  RequestError(int status, std::string param, const std::string& message,
               std::string type = "invalid_request_error");
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& type() const { return type_; }

 private:
  int status_;
  std::string param_, type_;
};

// JSON text of a reply; invalid UTF-8 in strings (client bytes quoted back) becomes U+FFFD
// instead of failing.
std::string json_text(const nlohmann::json& j);

// {"error": {"message", "type", "param"}} as JSON text; an empty param is written as null.
std::string error_body(std::string_view message, std::string_view type, std::string_view param);
std::string error_body(const RequestError& e);

// What the server allows; checked while parsing.
struct RequestLimits {
  int64_t vocab_size = 0;              // of the model: prompt ids must be below it
  int64_t max_prompt_tokens = 1 << 20; // after tokenization
  int64_t max_new_tokens = 1 << 16;    // largest accepted max_tokens
  size_t max_stop_strings = 16;
  size_t max_stop_bytes = 1024;        // per stop string
  size_t max_json_depth = 16;
};

// The body as one JSON object. Malformed JSON (including invalid UTF-8), duplicate keys, nesting
// deeper than limits.max_json_depth or anything but an object at the top: 400, naming the
// top-level field being read when the error was found.
nlohmann::json parse_body(std::string_view body, const RequestLimits& limits);

// A completion request as the HTTP side needs it: the engine's request plus how to answer.
struct CompletionParams {
  CompletionRequest request;
  std::string model;            // echoed in replies ("" = the server's model name)
  bool stream = false;
  bool return_tokens = false;   // add the new ids to each choice as "tokens"
  bool seed_given = false;      // false: the server picks a seed
};

// POST /v1/completions (and /v1/state/load, which passes require_state = true). `tokenizer` may
// be null: then only id prompts are accepted and stop strings are refused. `eos_id` is the
// model's end-of-sequence id (generation stops there unless the body says "ignore_eos": true).
CompletionParams parse_completion(const nlohmann::json& body, const Tokenizer* tokenizer,
                                  std::optional<int32_t> eos_id, const RequestLimits& limits,
                                  bool require_state = false);

// POST /tokenize: {"content": text} (or "prompt") -> the ids. Needs a tokenizer.
std::vector<int32_t> parse_tokenize(const nlohmann::json& body, const Tokenizer* tokenizer, const RequestLimits& limits);
// POST /detokenize: {"tokens": [ids]} -> the ids, each within the tokenizer's vocabulary.
std::vector<int32_t> parse_detokenize(const nlohmann::json& body, const Tokenizer* tokenizer,
                                      const RequestLimits& limits);
// POST /v1/state/save: {"id": "cmpl-..."} -> the completion id.
std::string parse_state_save(const nlohmann::json& body);

// ^cmpl-[0-9a-f]{1,64}$ (state ids: is_state_id in serve/saved_state.h)
bool is_completion_id(std::string_view s);

// ---- Replies (OpenAI text_completion format).

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

// "stop" for EOS and stop strings, "length" when max_tokens ran out.
std::string_view openai_finish_reason(FinishReason reason);

// The non-streaming reply: {id, object: "text_completion", created, model,
// choices: [{text, index: 0, finish_reason, logprobs: null[, tokens]}], usage}. Bytes of `text`
// that make no UTF-8 (a model may emit them) become U+FFFD, as text::replace_invalid_utf8 does;
// the ids stay exact.
nlohmann::json completion_reply(const std::string& id, int64_t created, const std::string& model,
                                const std::string& text, const std::vector<int32_t>* tokens,
                                FinishReason reason, const Usage& usage);

// One server-sent event with a chunk of the stream: "data: {...}\n\n". The same object as the
// reply with this piece of text (and ids when `tokens` is given); finish_reason is null until the
// last chunk, which also carries usage.
std::string stream_chunk(const std::string& id, int64_t created, const std::string& model, const std::string& text,
                         const std::vector<int32_t>* tokens, std::optional<FinishReason> reason,
                         const std::optional<Usage>& usage);
// "data: {\"error\": ...}\n\n" for an error after the stream started, and the closing event.
std::string stream_error(std::string_view message);
inline constexpr std::string_view kStreamDone = "data: [DONE]\n\n";

}  // namespace mambacpp::serve
