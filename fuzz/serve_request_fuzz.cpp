// libFuzzer: bytes as an HTTP request body -> every parser of the server (serve/request.h), with
// the fixture tokenizer (tests/data/tokenizer) and without one, and a model vocabulary of 512.
// Only a RequestError (status 400, with an error body that is valid JSON) may come out; whatever
// is accepted must respect the limits.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string_view>

#include <nlohmann/json.hpp>

#include "serve/request.h"
#include "text/tokenizer.h"

namespace {

using namespace mambacpp;
using namespace mambacpp::serve;

const Tokenizer& fixture() {
  static const Tokenizer tokenizer =
      Tokenizer::from_file(std::filesystem::path(__FILE__).parent_path() / "../tests/data/tokenizer/tokenizer.json");
  return tokenizer;
}

RequestLimits limits() {
  RequestLimits l;
  l.vocab_size = 512;
  l.max_prompt_tokens = 256;
  l.max_new_tokens = 1024;
  return l;
}

void check_accepted(const CompletionParams& p, const RequestLimits& l) {
  const GenerationOptions& g = p.request.generation;
  if (p.request.prompt.empty() && !p.request.start_state) __builtin_trap();
  if (int64_t(p.request.prompt.size()) > l.max_prompt_tokens) __builtin_trap();
  for (int32_t id : p.request.prompt)
    if (id < 0 || id >= l.vocab_size) __builtin_trap();
  if (g.max_new_tokens < 0 || g.max_new_tokens > l.max_new_tokens) __builtin_trap();
  if (find_sampling_problem(g.sampling)) __builtin_trap();
  for (const std::string& s : g.stop)
    if (s.empty()) __builtin_trap();
}

}  // namespace

// Runs one parser: it either accepts or throws a RequestError with status 400 and a valid JSON body.
template <class F>
void expect_accepted_or_400(F parse) {
  try {
    parse();
  } catch (const RequestError& e) {
    if (e.status() != 400) __builtin_trap();
    (void)nlohmann::json::parse(error_body(e));
  }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const RequestLimits l = limits();
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  nlohmann::json j;
  expect_accepted_or_400([&] { j = parse_body(body, l); });
  if (!j.is_object()) return 0;
  // Every endpoint's parser on the same body.
  expect_accepted_or_400([&] { check_accepted(parse_completion(j, &fixture(), 0, l), l); });
  expect_accepted_or_400([&] { check_accepted(parse_completion(j, nullptr, std::nullopt, l), l); });
  expect_accepted_or_400([&] { check_accepted(parse_completion(j, &fixture(), 0, l, true), l); });
  expect_accepted_or_400([&] { parse_tokenize(j, &fixture(), l); });
  expect_accepted_or_400([&] {
    for (int32_t id : parse_detokenize(j, &fixture(), l))
      if (id < 0 || id >= fixture().vocab_size()) __builtin_trap();
  });
  expect_accepted_or_400([&] { parse_state_save(j); });
  return 0;
}
