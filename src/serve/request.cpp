#include "serve/request.h"

#include <cmath>
#include <limits>
#include <set>

#include "infer/sampler.h"
#include "serve/saved_state.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

namespace mambacpp::serve {

using nlohmann::json;

RequestError::RequestError(int status, std::string param, const std::string& message, std::string type)
    : Error(ErrorKind::BadInput, message), status_(status), param_(std::move(param)), type_(std::move(type)) {}

std::string json_text(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

namespace {

template <class... Args>
[[noreturn]] void reject(const std::string& param, Args&&... args) {
  throw RequestError(400, param, cat(param, ": ", std::forward<Args>(args)...));
}

std::string excerpt(const json& v) {
  std::string s = json_text(v);
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

// The fields of a request body, each read with its type and range checked. Absent and null
// fields read as nullopt.
class Fields {
 public:
  // `prefix` names a nested object in messages ("stream_options.").
  explicit Fields(const json& body, std::string prefix = "") : body_(body), prefix_(std::move(prefix)) {}

  const json* find(const std::string& key) const {
    const auto it = body_.find(key);
    return it == body_.end() || it->is_null() ? nullptr : &*it;
  }

  std::optional<int64_t> integer(const std::string& key, int64_t min, int64_t max, std::string_view rule) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    return checked_integer(*v, prefix_ + key, min, max, rule);
  }

  std::optional<uint64_t> unsigned_integer(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (v->is_number_unsigned()) return v->get<uint64_t>();
    if (v->is_number_integer()) reject(prefix_ + key, v->get<int64_t>(), " is out of range: must be in [0, 2^64-1]");
    reject(prefix_ + key, "expected an integer, found ", excerpt(*v));
  }

  std::optional<double> number(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) reject(prefix_ + key, "expected a number, found ", excerpt(*v));
    const double x = v->get<double>();
    if (!std::isfinite(x)) reject(prefix_ + key, "must be a finite number");
    return x;
  }

  std::optional<bool> boolean(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) reject(prefix_ + key, "expected true or false, found ", excerpt(*v));
    return v->get<bool>();
  }

  std::optional<std::string> string(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    return checked_string(*v, prefix_ + key);
  }

  static int64_t checked_integer(const json& v, const std::string& name, int64_t min, int64_t max,
                                 std::string_view rule) {
    if (!v.is_number_integer()) reject(name, "expected an integer, found ", excerpt(v));
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
      reject(name, excerpt(v), " is out of range: ", rule);
    const int64_t x = v.get<int64_t>();
    if (x < min || x > max) reject(name, x, " is out of range: ", rule);
    return x;
  }

  static std::string checked_string(const json& v, const std::string& name) {
    if (!v.is_string()) reject(name, "expected a string, found ", excerpt(v));
    const std::string& s = v.get_ref<const std::string&>();
    if (!text::is_valid_utf8(s)) reject(name, "is not valid UTF-8");
    return s;
  }

 private:
  const json& body_;
  std::string prefix_;
};

std::vector<int32_t> token_ids(const json& array, const std::string& key, int64_t vocab_size, int64_t max_count) {
  if (int64_t(array.size()) > max_count)
    reject(key, array.size(), " tokens is more than the server allows (", max_count, ")");
  std::vector<int32_t> ids;
  ids.reserve(array.size());
  for (const json& v : array) {
    if (!v.is_number_integer()) reject(key, "expected token ids (integers), found ", excerpt(v), " at position ", ids.size());
    if (v.is_number_unsigned() ? v.get<uint64_t>() >= uint64_t(vocab_size) : (v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab_size))
      reject(key, "id ", excerpt(v), " at position ", ids.size(), " is outside the vocabulary (vocab_size ", vocab_size, ")");
    ids.push_back(v.get<int32_t>());
  }
  return ids;
}

std::vector<int32_t> encode_checked(const Tokenizer* tokenizer, const std::string& text, const std::string& key,
                                    int64_t max_tokens) {
  if (!tokenizer) reject(key, "this model has no tokenizer: send token ids instead of text");
  std::vector<int32_t> ids = tokenizer->encode(text);
  if (int64_t(ids.size()) > max_tokens)
    reject(key, "the text is ", ids.size(), " tokens, more than the server allows (", max_tokens, ")");
  return ids;
}

// "prompt": a string, an array of token ids, or a one-element array of either.
std::vector<int32_t> parse_prompt(const Fields& f, const Tokenizer* tokenizer, const RequestLimits& limits,
                                  bool has_state) {
  const json* p = f.find("prompt");
  if (!p) {
    if (has_state) return {};
    reject("prompt", "is required (a string or an array of token ids)");
  }
  if (p->is_array() && !p->empty() && ((*p)[0].is_string() || (*p)[0].is_array())) {
    if (p->size() != 1) reject("prompt", "one prompt per request, found ", p->size());
    p = &(*p)[0];
  }
  std::vector<int32_t> ids;
  if (p->is_string()) {
    const std::string text = Fields::checked_string(*p, "prompt");
    ids = encode_checked(tokenizer, text, "prompt", limits.max_prompt_tokens);
  } else if (p->is_array()) {
    ids = token_ids(*p, "prompt", limits.vocab_size, limits.max_prompt_tokens);
  } else {
    reject("prompt", "expected a string or an array of token ids, found ", excerpt(*p));
  }
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] >= limits.vocab_size)
      reject("prompt", "the text gives token id ", ids[i], " at position ", i, ", outside the model's vocabulary (vocab_size ",
             limits.vocab_size, ")");
  if (ids.empty() && !has_state) reject("prompt", "is empty: the model needs at least one token to start from");
  return ids;
}

// "stop": a string or an array of strings, each non-empty.
std::vector<std::string> parse_stop(const Fields& f, const Tokenizer* tokenizer, const RequestLimits& limits) {
  const json* v = f.find("stop");
  if (!v) return {};
  std::vector<std::string> stops;
  if (v->is_string()) {
    stops.push_back(Fields::checked_string(*v, "stop"));
  } else if (v->is_array()) {
    if (v->size() > limits.max_stop_strings) reject("stop", "at most ", limits.max_stop_strings, " stop strings, found ", v->size());
    for (const json& s : *v) stops.push_back(Fields::checked_string(s, "stop"));
  } else {
    reject("stop", "expected a string or an array of strings, found ", excerpt(*v));
  }
  for (const std::string& s : stops) {
    if (s.empty()) reject("stop", "a stop string must not be empty");
    if (s.size() > limits.max_stop_bytes) reject("stop", "a stop string is longer than ", limits.max_stop_bytes, " bytes");
  }
  if (!stops.empty() && !tokenizer) reject("stop", "stop strings need a tokenizer (they match the text), and this model has none");
  return stops;
}

// OpenAI fields this server does not implement: accepted only at the value that changes nothing.
void refuse_unsupported(const Fields& f) {
  f.integer("n", 1, 1, "only n = 1 is supported");
  f.integer("best_of", 1, 1, "only best_of = 1 is supported");
  if (f.boolean("echo").value_or(false)) reject("echo", "echo is not supported");
  if (f.find("logprobs")) reject("logprobs", "logprobs are not supported");
  if (auto s = f.string("suffix"); s && !s->empty()) reject("suffix", "suffix is not supported");
  for (const char* key : {"presence_penalty", "frequency_penalty"})
    if (auto x = f.number(key); x && *x != 0) reject(key, "is not supported (use repetition_penalty)");
  if (const json* bias = f.find("logit_bias")) {
    if (!bias->is_object()) reject("logit_bias", "expected an object, found ", excerpt(*bias));
    if (!bias->empty()) reject("logit_bias", "logit_bias is not supported");
  }
  if (const json* options = f.find("stream_options")) {
    if (!options->is_object()) reject("stream_options", "expected an object, found ", excerpt(*options));
    Fields(*options, "stream_options.").boolean("include_usage");  // usage always comes with the last chunk
  }
  f.string("user");
}

// The sampler field's name in the request body.
std::string body_key(SamplingField field) { return std::string(sampling_field_name(field)); }

SamplingParams parse_sampling(const Fields& f) {
  SamplingParams s;
  s.temperature = f.number("temperature").value_or(s.temperature);
  s.top_k = f.integer("top_k", 0, std::numeric_limits<int64_t>::max(), "must be >= 0 (0 = off)").value_or(s.top_k);
  s.top_p = f.number("top_p").value_or(s.top_p);
  s.min_p = f.number("min_p").value_or(s.min_p);
  s.repetition_penalty = f.number("repetition_penalty").value_or(s.repetition_penalty);
  if (auto problem = find_sampling_problem(s)) reject(body_key(problem->field), problem->value, " is out of range: ", problem->rule);
  return s;
}

}  // namespace

std::string error_body(std::string_view message, std::string_view type, std::string_view param) {
  json error = {{"message", message}, {"type", type}, {"param", nullptr}};
  if (!param.empty()) error["param"] = param;
  return json_text({{"error", std::move(error)}});
}

std::string error_body(const RequestError& e) { return error_body(e.what(), e.type(), e.param()); }

json parse_body(std::string_view body, const RequestLimits& limits) {
  std::string current_key;  // the top-level field being read, named if the JSON breaks there
  std::set<std::string> seen;
  const json::parser_callback_t track = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1) {
      current_key = parsed.get<std::string>();
      if (!seen.insert(current_key).second) reject(current_key, "the field appears twice");
    }
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        size_t(depth) >= limits.max_json_depth)
      reject(current_key, "nested deeper than ", limits.max_json_depth, " levels");
    return true;
  };
  json j;
  try {
    j = json::parse(body.begin(), body.end(), track);
  } catch (const json::exception& e) {
    std::string what = e.what();
    if (const size_t end = what.find("] "); what.rfind("[json.exception", 0) == 0 && end != std::string::npos)
      what.erase(0, end + 2);
    if (current_key.empty()) throw RequestError(400, "", cat("malformed JSON body: ", what));
    reject(current_key, "malformed JSON body while reading this field: ", what);
  }
  if (!j.is_object()) throw RequestError(400, "", cat("the body must be a JSON object, found ", j.type_name()));
  return j;
}

CompletionParams parse_completion(const json& body, const Tokenizer* tokenizer, std::optional<int32_t> eos_id,
                                  const RequestLimits& limits, bool require_state) {
  const Fields f(body);
  CompletionParams p;
  refuse_unsupported(f);
  p.model = f.string("model").value_or("");
  if (auto state = f.string("state_id")) {
    if (!is_state_id(*state)) reject("state_id", "is not a state id (\"st-\" and 32 hex digits)");
    p.request.start_state = *state;
  } else if (require_state) {
    reject("state_id", "is required (the id /v1/state/save returned)");
  }
  p.request.prompt = parse_prompt(f, tokenizer, limits, p.request.start_state.has_value());

  GenerationOptions& g = p.request.generation;
  g.max_new_tokens =
      f.integer("max_tokens", 0, limits.max_new_tokens, cat("must be in [0, ", limits.max_new_tokens, "]")).value_or(16);
  g.sampling = parse_sampling(f);
  if (auto seed = f.unsigned_integer("seed")) {
    g.sampling.seed = *seed;
    p.seed_given = true;
  }
  g.stop = parse_stop(f, tokenizer, limits);
  if (!f.boolean("ignore_eos").value_or(false)) g.eos_id = eos_id;
  p.stream = f.boolean("stream").value_or(false);
  p.return_tokens = f.boolean("return_tokens").value_or(false);
  return p;
}

std::vector<int32_t> parse_tokenize(const json& body, const Tokenizer* tokenizer, const RequestLimits& limits) {
  const Fields f(body);
  const char* key = f.find("content") ? "content" : "prompt";
  const std::optional<std::string> text = f.string(key);
  if (!text) reject("content", "is required (the text to tokenize)");
  return encode_checked(tokenizer, *text, key, limits.max_prompt_tokens);
}

std::vector<int32_t> parse_detokenize(const json& body, const Tokenizer* tokenizer, const RequestLimits& limits) {
  const Fields f(body);
  const json* tokens = f.find("tokens");
  if (!tokens) reject("tokens", "is required (an array of token ids)");
  if (!tokens->is_array()) reject("tokens", "expected an array of token ids, found ", excerpt(*tokens));
  if (!tokenizer) reject("tokens", "this model has no tokenizer");
  return token_ids(*tokens, "tokens", tokenizer->vocab_size(), limits.max_prompt_tokens);
}

std::string parse_state_save(const json& body) {
  const std::optional<std::string> id = Fields(body).string("id");
  if (!id) reject("id", "is required (the id of a finished completion, \"cmpl-...\")");
  if (!is_completion_id(*id)) reject("id", "is not a completion id (\"cmpl-\" and hex digits)");
  return *id;
}

namespace {
bool is_lower_hex(std::string_view s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}
}  // namespace

bool is_completion_id(std::string_view s) {
  return s.size() > 5 && s.size() <= 5 + 64 && s.substr(0, 5) == "cmpl-" && is_lower_hex(s.substr(5));
}

std::string_view openai_finish_reason(FinishReason reason) { return reason == FinishReason::Length ? "length" : "stop"; }

namespace {

// A model may emit bytes that make no UTF-8 (a random one does); JSON text cannot carry them.
std::string valid_utf8(const std::string& s) { return text::is_valid_utf8(s) ? s : text::replace_invalid_utf8(s); }

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json completion_object(const std::string& id, int64_t created, const std::string& model, const std::string& text,
                       const std::vector<int32_t>* tokens, std::optional<FinishReason> reason) {
  json choice = {{"text", valid_utf8(text)}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  if (reason) choice["finish_reason"] = openai_finish_reason(*reason);
  if (tokens) choice["tokens"] = *tokens;
  return {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
          {"choices", json::array({std::move(choice)})}};
}

}  // namespace

json completion_reply(const std::string& id, int64_t created, const std::string& model, const std::string& text,
                      const std::vector<int32_t>* tokens, FinishReason reason, const Usage& usage) {
  json reply = completion_object(id, created, model, text, tokens, reason);
  reply["usage"] = usage_json(usage);
  return reply;
}

std::string stream_chunk(const std::string& id, int64_t created, const std::string& model, const std::string& text,
                         const std::vector<int32_t>* tokens, std::optional<FinishReason> reason,
                         const std::optional<Usage>& usage) {
  json chunk = completion_object(id, created, model, text, tokens, reason);
  if (usage) chunk["usage"] = usage_json(*usage);
  return "data: " + json_text(chunk) + "\n\n";
}

std::string stream_error(std::string_view message) {
  return "data: " + error_body(message, "server_error", "") + "\n\n";
}

}  // namespace mambacpp::serve
