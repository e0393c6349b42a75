// The client side of the serve load test (bench/serve_load.cpp, tests/serve_load_test.cpp):
// `clients` threads, each looping streaming completions against a running `mambacpp serve` for
// a fixed time, checking every stream as it goes.
//
// A stream is correct when it answers 200, ends with `data: [DONE]`, carries no error event, and
// its token ids (return_tokens) equal the reference for its (prompt, seed): the same request sent
// alone, non-streaming, before the load starts. Sampling is at temperature > 0 with a seed, so a
// lost, truncated or mixed-up stream, or a result that depends on the batch, shows as a mismatch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mambacpp::bench {

// The completion API spoken: ours (OpenAI's POST /v1/completions, ids in choices[0].tokens, the
// stream ends with [DONE]) or llama.cpp's llama-server (its POST /completion with n_predict, ids
// in `tokens`, the last event has "stop": true), for the peer comparison (bench/serve_peer.sh).
enum class Api { OpenAI, LlamaCpp };

struct LoadOptions {
  Api api = Api::OpenAI;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;           // sent as Authorization: Bearer when not empty
  int clients = 64;              // concurrent streaming clients
  double seconds = 60;           // no request starts after this; those running finish
  int max_tokens = 64;
  double temperature = 0.8;      // > 0, so that the seed matters
  int references = 8;            // (prompt, seed) pairs; every request uses one of them
  std::vector<std::string> prompts;  // empty: default_prompts()
  std::vector<std::vector<int32_t>> id_prompts;  // token-id prompts, used instead of `prompts` when not empty
  int server_pid = 0;            // > 0: its VmRSS is sampled every second
  uint64_t seed = 1;             // the clients' choice of pairs
};

// One (prompt, seed) pair and the ids of its solo, non-streaming completion. The prompt is text,
// or token ids when `prompt_ids` is not empty.
struct Reference {
  std::string prompt;
  std::vector<int32_t> prompt_ids;
  uint64_t seed = 0;
  std::vector<int32_t> tokens;
  std::string label() const;  // the text in quotes, or "N prompt ids"
};

struct RssSample {
  double seconds;  // since the load started
  int64_t bytes;
};

struct LoadResult {
  int clients = 0;
  double seconds = 0;         // start to the end of the last request
  int64_t requests = 0;       // finished (correct or not)
  int64_t errors = 0;         // HTTP error, error event, no [DONE], broken connection
  int64_t mismatches = 0;     // completed streams whose ids differ from their reference
  int64_t tokens = 0;         // streamed token ids, all requests
  std::vector<double> time_to_first_token;  // seconds, one per request with a token
  std::vector<double> time_per_output_token;  // seconds, one per request with >= 2 tokens
  std::vector<RssSample> rss;
  std::vector<std::string> problems;  // the first few errors and mismatches, described

  double tokens_per_second() const { return seconds > 0 ? double(tokens) / seconds : 0; }
};

// The `q`-quantile (0..1) of `values` by nearest rank; 0 when empty.
double percentile(std::vector<double> values, double q);

std::vector<std::string> default_prompts();

// `count` prompts of 8 to 64 random ids below `vocab_size` (for models without a tokenizer).
std::vector<std::vector<int32_t>> random_id_prompts(int count, int64_t vocab_size, uint64_t seed);

// References for options.references (prompt, seed) pairs, requested one at a time. Throws
// std::runtime_error naming the request when the server refuses one.
std::vector<Reference> fetch_references(const LoadOptions& options);

LoadResult run_load(const LoadOptions& options, const std::vector<Reference>& references);

// VmRSS of process `pid` in bytes, or -1 when it cannot be read.
int64_t resident_bytes(int pid);

// A one-line summary: requests, errors, tokens/s, p50/p99 TTFT and TPOT, RSS first/max/last.
std::string summary(const LoadResult& result);

}  // namespace mambacpp::bench
