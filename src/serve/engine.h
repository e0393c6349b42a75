// The serving engine: one thread owns the model and runs continuous batching. Every iteration it
// (1) drops cancelled requests, (2) admits waiting requests while fewer than max_batch are
// prefilling or running, (3) prefills admitted prompts alone (batch 1) from the longest cached
// prefix state (infer/prefix_cache.h), at most prefill_chunk_tokens per iteration so a long
// prompt does not stall running streams, storing states at the cache boundaries on the way; a
// prompt whose prefill completes joins the batch, (4) samples one token for every running
// sequence, and (5) steps them all together through MambaModel::step. A sequence that finishes
// leaves at once (the last slot moves into its place; the batch state keeps its memory).
// HTTP threads only submit() and read their Stream; nothing they do touches the model.
//
// Results never depend on the batch: each sequence has its own Sampler, Rng (seeded with its
// request's seed), repetition context and text (infer/sequence_text.h, as the Generator), and
// prefill is per sequence. Prompts are cut into pieces at multiples of the grid
// gcd(cache_every, prefill_chunk_tokens) counted from the prompt's start, cold or cached, and
// cache entries are resumable only at multiples of cache_every, so a cached start repeats the
// cold run's arithmetic exactly: bitwise-equal logits and tokens. With a grid equal to the
// model's chunk length (the defaults: 512 both) the pieces are the Generator's chunks, so a
// request's tokens equal `mambacpp generate` bit for bit (while the batch stays below the GEMM
// threshold, 64 rows for F32 weights: from there the step's matrix products round differently).
//
// Prefix-state cache: entries at every multiple of cache_every inside a prompt (resumable by
// longer prompts) and at the prompt's end with its last logits (the same prompt again runs no
// prefill at all). A lookup leaves at least one token to run unless the whole prompt is cached
// with logits. Requests continuing a saved state (start_state) neither use nor fill the cache.
//
// Saved states (serve/saved_state.h): the last kept_final_states finished completions keep their
// final state in memory (LRU); save_state() writes one to state_dir under a random id. The
// state covers every token but the last sampled one, which stays pending and runs first when a
// request continues from it, so "save A's completion, continue with B" runs the tokens of a cold
// request for A + completion + B (the same ids in the tests; the cold request's pieces are cut
// elsewhere, so its logits may differ in the last bits).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "infer/generator.h"  // GenerationOptions, FinishReason

namespace mambacpp {
class MambaModel;
class Tokenizer;
}  // namespace mambacpp

namespace mambacpp::serve {

struct EngineOptions {
  int max_batch = 32;                       // sequences stepped together
  int max_queue = 64;                       // waiting (not yet admitted) requests; more are refused
  int64_t state_cache_bytes = 256ll << 20;  // prefix-state cache budget (LRU), 0 = off
  int64_t cache_every = 512;                // prefix states are kept every this many prompt tokens and at the end
  int64_t prefill_chunk_tokens = 512;       // prompt tokens prefilled per iteration (at least one piece)
  int64_t max_prompt_tokens = 1 << 20;      // longer prompts are refused (HTTP 400)
  int64_t max_new_tokens_limit = 1 << 16;   // requested max_tokens above this are refused
  std::filesystem::path state_dir;          // where /v1/state/save writes (empty: save/load refused)
  int64_t kept_final_states = 64;           // finished completions whose final state stays saveable (LRU;
                                            // one sequence state each: 2.8 MB for the 130m shape)
};

struct CompletionRequest {
  std::vector<int32_t> prompt;         // ids; may be empty only when start_state is set
  GenerationOptions generation;        // sampling, max_new_tokens, stop strings, eos
  std::optional<std::string> start_state;  // a state id from save_state(): continue after its tokens
};

// One event of a request's stream, in order: zero or more Tokens, then exactly one Finished or Error.
struct StreamEvent {
  enum class Kind { Tokens, Finished, Error } kind = Kind::Tokens;
  std::vector<int32_t> ids;  // Tokens: the new ids since the last event
  std::string text;          // Tokens: the text that became final (UTF-8 safe, stop strings held back)
  FinishReason reason = FinishReason::Length;  // Finished
  std::string error;         // Error: message for the client
};

struct RequestTiming {
  double queue_seconds = 0;          // submit -> admitted
  double first_token_seconds = 0;    // submit -> first token sampled
  double decode_seconds = 0;         // first token -> finish
  int64_t prompt_tokens = 0, cached_prompt_tokens = 0, new_tokens = 0;
};

struct StreamControl;  // the engine's side of a Stream (engine.cpp)

// The engine's side of one request, shared with the HTTP thread that submitted it. Tokens events
// not yet taken are merged, so a slow reader gets everything pending in one event.
class Stream {
 public:
  // Blocks until an event is ready or `timeout` passes (nullopt then). After the final event
  // (Finished or Error) was taken, returns nullopt at once.
  std::optional<StreamEvent> next(std::chrono::milliseconds timeout);
  // The client went away: the engine drops the sequence at its next iteration.
  void cancel();
  bool cancelled() const;
  const std::string& id() const { return id_; }  // "cmpl-<hex>", also the key for save_state
  RequestTiming timing() const;                  // complete once Finished was delivered

 private:
  friend struct StreamControl;
  explicit Stream(std::string id) : id_(std::move(id)) {}
  void push(StreamEvent event);
  std::string id_;
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<StreamEvent> events_;
  bool cancelled_ = false;
  bool closed_ = false;    // the final event was pushed
  bool drained_ = false;   // ... and taken
  RequestTiming timing_;
};

struct EngineMetrics {
  // requests_total: accepted by submit(); rejected: refused because the queue was full (invalid
  // requests throw and are not counted); cancelled: dropped after Stream::cancel; failed: ended
  // by an Error event (an exception while serving them, or the engine stopping).
  int64_t requests_total = 0, requests_rejected = 0, requests_cancelled = 0, requests_failed = 0;
  int64_t prompt_tokens_total = 0, generated_tokens_total = 0;
  // Per request that may use the cache (a fresh prompt while the cache is on): a hit starts from
  // a cached state; hit tokens are the prompt tokens it did not have to run.
  int64_t cache_hits = 0, cache_misses = 0, cache_hit_tokens = 0;
  int64_t cache_bytes = 0, cache_entries = 0;
  int64_t steps_total = 0;  // batched decode steps
  int running = 0, queued = 0;  // running: admitted (prefilling or decoding); queued: waiting
  // Histograms with cumulative buckets (Prometheus `le` upper bounds, seconds / sequences).
  struct Histogram {
    std::vector<double> upper_bounds;
    std::vector<int64_t> counts;  // cumulative, one per bound (+Inf is `count`)
    double sum = 0;
    int64_t count = 0;
    void observe(double value);
  };
  Histogram time_to_first_token, time_per_output_token, batch_size;
};

class Engine {
 public:
  // `tokenizer` may be null (id prompts only; stop strings refused). Starts the engine thread,
  // which runs the model with as many threads as the calling thread uses (core/threads.h).
  Engine(MambaModel& model, const Tokenizer* tokenizer, EngineOptions options);
  ~Engine();  // stops the thread; streams still open receive an Error event
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. Throws BadInput (naming the field) for an invalid request; returns null
  // when max_queue requests already wait (the server answers 503 with Retry-After).
  std::shared_ptr<Stream> submit(CompletionRequest request);

  // Writes the final state of finished completion `completion_id` (prompt and every generated
  // token) to the state directory and returns an opaque id ("st-<hex>"). BadInput when the id is
  // unknown, not finished, or no longer kept.
  std::string save_state(const std::string& completion_id);
  bool has_state(const std::string& state_id) const;

  EngineMetrics metrics() const;
  const EngineOptions& options() const { return options_; }

 private:
  struct Impl;
  EngineOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mambacpp::serve
