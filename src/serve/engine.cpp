#include "serve/engine.h"

#include <algorithm>
#include <list>
#include <numeric>
#include <unordered_map>

#include "core/error.h"
#include "core/threads.h"
#include "infer/prefix_cache.h"
#include "infer/sampler.h"
#include "infer/sequence_text.h"
#include "model/mamba_model.h"
#include "serve/saved_state.h"

namespace mambacpp::serve {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

EngineMetrics::Histogram histogram(std::vector<double> upper_bounds) {
  EngineMetrics::Histogram h;
  h.counts.assign(upper_bounds.size(), 0);
  h.upper_bounds = std::move(upper_bounds);
  return h;
}

// A client's value echoed in an error message, cut so it cannot flood a log.
std::string shown(std::string_view s) { return s.size() <= 64 ? std::string(s) : cat(s.substr(0, 64), "..."); }

void check_options(const EngineOptions& o) {
  const std::pair<const char*, int64_t> at_least_one[] = {
      {"max_batch", o.max_batch}, {"cache_every", o.cache_every}, {"prefill_chunk_tokens", o.prefill_chunk_tokens},
      {"max_prompt_tokens", o.max_prompt_tokens}};
  for (const auto& [name, value] : at_least_one)
    if (value < 1) fail("engine option ", name, " = ", value, " is out of range: must be >= 1");
  const std::pair<const char*, int64_t> not_negative[] = {{"max_queue", o.max_queue},
                                                          {"state_cache_bytes", o.state_cache_bytes},
                                                          {"max_new_tokens_limit", o.max_new_tokens_limit},
                                                          {"kept_final_states", o.kept_final_states}};
  for (const auto& [name, value] : not_negative)
    if (value < 0) fail("engine option ", name, " = ", value, " is out of range: must be >= 0");
}

}  // namespace

void EngineMetrics::Histogram::observe(double value) {
  for (size_t i = 0; i < upper_bounds.size(); ++i)
    if (value <= upper_bounds[i]) ++counts[i];
  sum += value;
  ++count;
}

// ---------------------------------------------------------------------------------------------
// Stream

void Stream::push(StreamEvent event) {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    const bool final = event.kind != StreamEvent::Kind::Tokens;
    if (!final && !events_.empty() && events_.back().kind == StreamEvent::Kind::Tokens) {
      StreamEvent& pending = events_.back();
      pending.ids.insert(pending.ids.end(), event.ids.begin(), event.ids.end());
      pending.text += event.text;
    } else {
      events_.push_back(std::move(event));
    }
    closed_ = final;
  }
  ready_.notify_all();
}

std::optional<StreamEvent> Stream::next(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  ready_.wait_for(lock, timeout, [&] { return !events_.empty() || drained_; });
  if (events_.empty()) return std::nullopt;
  StreamEvent event = std::move(events_.front());
  events_.pop_front();
  if (event.kind != StreamEvent::Kind::Tokens) drained_ = true;
  return event;
}

void Stream::cancel() {
  std::lock_guard lock(mutex_);
  cancelled_ = true;
}

bool Stream::cancelled() const {
  std::lock_guard lock(mutex_);
  return cancelled_;
}

RequestTiming Stream::timing() const {
  std::lock_guard lock(mutex_);
  return timing_;
}

struct StreamControl {
  static std::shared_ptr<Stream> open(std::string id) { return std::shared_ptr<Stream>(new Stream(std::move(id))); }
  static void push(Stream& stream, StreamEvent event) { stream.push(std::move(event)); }
  static void set_timing(Stream& stream, const RequestTiming& timing) {
    std::lock_guard lock(stream.mutex_);
    stream.timing_ = timing;
  }
};

namespace {

StreamEvent error_event(std::string message) {
  StreamEvent e;
  e.kind = StreamEvent::Kind::Error;
  e.error = std::move(message);
  return e;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The engine

struct Engine::Impl {
  // A request waiting for admission.
  struct Pending {
    std::shared_ptr<Stream> stream;
    CompletionRequest request;
    std::shared_ptr<const SavedState> start;  // loaded by submit() for a start_state
    Clock::time_point submitted;
  };

  // An admitted request: prefilling, then running in a slot of the batch.
  struct Sequence {
    Sequence(Pending& p, int64_t vocab, const Tokenizer* tokenizer);
    std::shared_ptr<Stream> stream;
    std::vector<int32_t> tokens;  // the context before the first new token: saved tokens, prompt
    std::vector<int32_t> to_run;  // what prefill runs: the prompt (after the saved pending token)
    Sampler sampler;
    SequenceProgress progress;
    bool uses_cache = false;
    int64_t prefilled = 0;        // tokens of to_run already run (or taken from the cache)
    InferenceState solo;          // while prefilling: batch 1
    std::vector<float> prefill_logits;
    Clock::time_point submitted, first_token;
    RequestTiming timing;
  };

  struct KeptState {
    std::shared_ptr<const SavedState> state;
    std::string saved_id;  // once written
  };
  using KeptList = std::list<std::pair<std::string, KeptState>>;  // completion id, most recent first

  Impl(MambaModel& model, const Tokenizer* tokenizer, const EngineOptions& options);
  ~Impl();

  // HTTP threads.
  std::shared_ptr<Stream> submit(CompletionRequest request);
  void validate(const CompletionRequest& request) const;
  std::shared_ptr<const SavedState> load_start_state(const std::string& id) const;
  std::string save_state(const std::string& completion_id);
  bool has_state(const std::string& state_id) const;
  EngineMetrics metrics() const;

  // The engine thread.
  void run();
  void iterate(std::vector<Pending>& admitted);
  void admit(Pending pending);
  void prefill_some();
  int64_t prefill_piece(Sequence& seq);
  void join(std::vector<std::unique_ptr<Sequence>>& ready);
  void sample_running();
  void step_running();
  void drop_cancelled();
  void remove_slots(const std::vector<int>& slots);
  void on_first_token(Sequence& seq);
  void finish(Sequence& seq, int slot);
  void end_with_error(Sequence& seq, const std::string& message);
  void end_all(const std::string& message);
  void keep_final_state(const std::string& completion_id, std::shared_ptr<const SavedState> state);
  template <class Update>
  void update_metrics(Update update) {
    std::lock_guard lock(mutex);
    update(counters);
  }

  MambaModel& model;
  const Tokenizer* tokenizer;
  const EngineOptions options;
  const int64_t vocab;
  const int64_t grid;  // prompts are cut at multiples of this, counted from their start
  const ModelSignature signature;
  const int threads;  // for the model's parallel loops: as many as the creating thread uses

  // Shared with HTTP threads, under `mutex`.
  mutable std::mutex mutex;
  std::condition_variable wake;
  std::deque<Pending> queue;
  bool stopping = false;
  EngineMetrics counters;
  KeptList kept;
  std::unordered_map<std::string, KeptList::iterator> kept_by_id;

  // The engine thread's own.
  PrefixStateCache cache;
  std::vector<std::unique_ptr<Sequence>> prefilling;  // in admission order
  std::vector<std::unique_ptr<Sequence>> running;     // running[s] is slot s of batch_state
  InferenceState batch_state;                         // batch() == running.size() while any run
  std::vector<float> logits;                          // [max_batch, vocab]: row s for slot s
  std::vector<int32_t> next_tokens;                   // [max_batch]
  std::vector<int> leaving;                           // scratch: slots to remove

  std::thread thread;  // last: starts once everything above exists
};

namespace {

// The tokens before a request's first new one: those of its start state, then its prompt.
std::vector<int32_t> context_of(const SavedState* start, const std::vector<int32_t>& prompt) {
  std::vector<int32_t> tokens = start ? start->tokens : std::vector<int32_t>{};
  tokens.insert(tokens.end(), prompt.begin(), prompt.end());
  return tokens;
}

}  // namespace

Engine::Impl::Sequence::Sequence(Pending& p, int64_t vocab, const Tokenizer* tokenizer)
    : stream(p.stream),
      tokens(context_of(p.start.get(), p.request.prompt)),
      sampler(p.request.generation.sampling, vocab),
      progress(tokens, p.request.generation, vocab, tokenizer),
      submitted(p.submitted) {
  if (p.start) to_run.push_back(p.start->tokens.back());
  to_run.insert(to_run.end(), p.request.prompt.begin(), p.request.prompt.end());
  timing.prompt_tokens = int64_t(p.request.prompt.size());
}

Engine::Impl::Impl(MambaModel& model_, const Tokenizer* tokenizer_, const EngineOptions& options_)
    : model(model_),
      tokenizer(tokenizer_),
      options((check_options(options_), options_)),
      vocab(model_.config().vocab_size),
      grid(std::gcd(options_.cache_every, options_.prefill_chunk_tokens)),
      signature(model_signature(model_)),
      threads(num_threads()),
      cache(model_.config(), options_.state_cache_bytes),
      logits(size_t(options_.max_batch * vocab)),
      next_tokens(size_t(options_.max_batch)) {
  if (!options.state_dir.empty()) {
    std::error_code ec;
    fs::create_directories(options.state_dir, ec);
    if (ec) fail("state directory ", options.state_dir.string(), ": cannot create it: ", ec.message());
  }
  counters.time_to_first_token = histogram({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60});
  counters.time_per_output_token = histogram({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5});
  counters.batch_size = histogram({1, 2, 4, 8, 16, 32, 64, 128, 256});
  thread = std::thread([this] { run(); });
}

Engine::Impl::~Impl() {
  {
    std::lock_guard lock(mutex);
    stopping = true;
  }
  wake.notify_all();
  thread.join();
}

// --- HTTP threads ----------------------------------------------------------------------------

void Engine::Impl::validate(const CompletionRequest& r) const {
  if (r.prompt.empty() && !r.start_state)
    fail("prompt is empty: the model needs at least one token to start from (or a start_state to continue)");
  if (int64_t(r.prompt.size()) > options.max_prompt_tokens)
    fail("prompt has ", r.prompt.size(), " tokens, more than this server's limit of ", options.max_prompt_tokens);
  if (!r.prompt.empty()) check_token_ids(r.prompt, vocab, "prompt");
  const GenerationOptions& g = r.generation;
  if (g.max_new_tokens < 0 || g.max_new_tokens > options.max_new_tokens_limit)
    fail("max_new_tokens = ", g.max_new_tokens, " is out of range: must be in [0, ", options.max_new_tokens_limit, "]");
  if (!g.stop.empty() && !tokenizer) fail("stop: stop strings need a tokenizer, and this model has none");
  for (const std::string& stop : g.stop)
    if (stop.empty()) fail("stop: a stop string must not be empty");
  if (const auto problem = find_sampling_problem(g.sampling))
    fail(sampling_field_name(problem->field), " = ", problem->value, " is out of range: ", problem->rule);
  if (g.eos_id && (*g.eos_id < 0 || *g.eos_id >= vocab))
    fail("eos_id = ", *g.eos_id, " is outside the vocabulary (vocab_size ", vocab, ")");
}

std::shared_ptr<const SavedState> Engine::Impl::load_start_state(const std::string& id) const {
  if (options.state_dir.empty()) fail("start_state: this server keeps no states (it has no state directory)");
  if (!is_state_id(id)) fail("start_state '", shown(id), "' is not a state id (\"st-\" and 32 hex digits)");
  return std::make_shared<const SavedState>(
      read_saved_state(options.state_dir / id, model, signature, cat("start_state ", id)));
}

std::shared_ptr<Stream> Engine::Impl::submit(CompletionRequest request) {
  validate(request);
  std::shared_ptr<const SavedState> start;
  if (request.start_state) start = load_start_state(*request.start_state);
  std::shared_ptr<Stream> stream = StreamControl::open("cmpl-" + random_hex(12));
  {
    std::lock_guard lock(mutex);
    if (stopping) {
      StreamControl::push(*stream, error_event("the server is shutting down"));
      return stream;
    }
    if (int64_t(queue.size()) >= options.max_queue) {
      ++counters.requests_rejected;
      return nullptr;
    }
    ++counters.requests_total;
    counters.prompt_tokens_total += int64_t(request.prompt.size());
    queue.push_back(Pending{stream, std::move(request), std::move(start), Clock::now()});
  }
  wake.notify_one();
  return stream;
}

// A completion saved twice keeps its first id. The file is written outside the lock, so the
// engine thread never waits for the disk.
std::string Engine::Impl::save_state(const std::string& completion_id) {
  if (options.state_dir.empty()) fail("saving states is off: this server has no state directory");
  std::shared_ptr<const SavedState> state;
  {
    std::lock_guard lock(mutex);
    const auto found = kept_by_id.find(completion_id);
    if (found == kept_by_id.end())
      fail("completion '", shown(completion_id), "' is unknown, unfinished, produced no tokens, or no longer kept (",
           "the ", options.kept_final_states, " most recent finished completions are)");
    kept.splice(kept.begin(), kept, found->second);
    const KeptState& entry = found->second->second;
    if (!entry.saved_id.empty() && has_state(entry.saved_id)) return entry.saved_id;
    state = entry.state;
  }
  const std::string id = new_state_id();
  write_saved_state(options.state_dir / id, *state, signature);
  std::lock_guard lock(mutex);
  if (const auto found = kept_by_id.find(completion_id); found != kept_by_id.end())
    found->second->second.saved_id = id;
  return id;
}

bool Engine::Impl::has_state(const std::string& state_id) const {
  if (options.state_dir.empty() || !is_state_id(state_id)) return false;
  std::error_code ec;
  return fs::is_regular_file(options.state_dir / state_id, ec);
}

EngineMetrics Engine::Impl::metrics() const {
  std::lock_guard lock(mutex);
  EngineMetrics m = counters;
  m.queued = int(queue.size());
  return m;
}

// --- The engine thread -----------------------------------------------------------------------

void Engine::Impl::run() {
  // OpenMP's thread count belongs to each thread: take the one the engine's creator set.
  set_num_threads(threads);
  for (;;) {
    std::vector<Pending> admitted;
    {
      std::unique_lock lock(mutex);
      wake.wait(lock, [&] { return stopping || !queue.empty() || !running.empty() || !prefilling.empty(); });
      if (stopping) break;
      while (!queue.empty() && running.size() + prefilling.size() + admitted.size() < size_t(options.max_batch)) {
        admitted.push_back(std::move(queue.front()));
        queue.pop_front();
      }
    }
    iterate(admitted);
  }
  end_all("the server is shutting down");
  std::lock_guard lock(mutex);
  for (Pending& p : queue) StreamControl::push(*p.stream, error_event("the server is shutting down"));
  counters.requests_failed += int64_t(queue.size());
  queue.clear();
}

void Engine::Impl::iterate(std::vector<Pending>& admitted) {
  try {
    drop_cancelled();
    for (Pending& p : admitted) admit(std::move(p));
    prefill_some();
    sample_running();
    step_running();
  } catch (const std::exception& e) {
    // Not one request's own work (those end alone): end every active request, keep serving.
    const std::string message = cat("internal error: ", e.what());
    for (Pending& p : admitted)
      if (p.stream) StreamControl::push(*p.stream, error_event(message));  // not admitted yet
    end_all(message);
  }
  update_metrics([&](EngineMetrics& m) {
    m.running = int(running.size() + prefilling.size());
    m.cache_bytes = cache.bytes();
    m.cache_entries = cache.entries();
  });
}

void Engine::Impl::admit(Pending pending) {
  if (pending.stream->cancelled()) {
    StreamControl::push(*pending.stream, error_event("cancelled"));
    update_metrics([](EngineMetrics& m) { ++m.requests_cancelled; });
    return;
  }
  std::unique_ptr<Sequence> seq;
  try {
    seq = std::make_unique<Sequence>(pending, vocab, tokenizer);
    seq->timing.queue_seconds = seconds(Clock::now() - seq->submitted);
    if (pending.request.generation.max_new_tokens == 0) {  // as the Generator: nothing to run
      StreamEvent done;
      done.kind = StreamEvent::Kind::Finished;
      StreamControl::set_timing(*seq->stream, seq->timing);
      StreamControl::push(*seq->stream, std::move(done));
      return;
    }
    seq->solo = model.new_state(1);
    seq->prefill_logits.resize(size_t(vocab));
    if (pending.start) {
      seq->solo.copy_slot(pending.start->state, 0, 0);
    } else if (options.state_cache_bytes > 0) {
      seq->uses_cache = true;
      const PrefixStateCache::Match match = cache.lookup(seq->to_run, seq->solo, 0, seq->prefill_logits.data());
      seq->prefilled = match.length;
      seq->timing.cached_prompt_tokens = match.length;
      update_metrics([&](EngineMetrics& m) {
        ++(match.length > 0 ? m.cache_hits : m.cache_misses);
        m.cache_hit_tokens += match.length;
      });
    }
    prefilling.push_back(std::move(seq));
  } catch (const std::exception& e) {
    if (seq) end_with_error(*seq, e.what());
    else StreamControl::push(*pending.stream, error_event(e.what()));
  }
}

// Runs prompt pieces, oldest admission first, until prefill_chunk_tokens ran; prompts that are
// complete join the batch.
void Engine::Impl::prefill_some() {
  int64_t budget = options.prefill_chunk_tokens;
  std::vector<std::unique_ptr<Sequence>> still, ready;
  for (std::unique_ptr<Sequence>& seq : prefilling) {
    try {
      while (seq->prefilled < int64_t(seq->to_run.size()) && budget > 0) budget -= prefill_piece(*seq);
    } catch (const std::exception& e) {
      end_with_error(*seq, e.what());
      continue;
    }
    (seq->prefilled == int64_t(seq->to_run.size()) ? ready : still).push_back(std::move(seq));
  }
  prefilling = std::move(still);
  join(ready);
}

// Runs to_run up to the next grid point (or its end) and stores the state there when it is a
// cache boundary or the prompt's end. Returns the tokens run.
int64_t Engine::Impl::prefill_piece(Sequence& seq) {
  const int64_t length = int64_t(seq.to_run.size()), start = seq.prefilled;
  const int64_t end = std::min(length, (start / grid + 1) * grid);
  const bool last = end == length;
  model.forward(seq.to_run.data() + start, 1, end - start, seq.solo, last ? LogitsMode::Last : LogitsMode::None,
                last ? seq.prefill_logits.data() : nullptr);
  seq.prefilled = end;
  const bool boundary = end % options.cache_every == 0;
  if (seq.uses_cache && (boundary || last))
    cache.insert(std::span<const int32_t>(seq.to_run).first(size_t(end)), seq.solo, 0, boundary,
                 last ? std::span<const float>(seq.prefill_logits) : std::span<const float>());
  return end - start;
}

// Prefilled sequences take the next slots of the batch (grown once for all of them).
void Engine::Impl::join(std::vector<std::unique_ptr<Sequence>>& ready) {
  if (ready.empty()) return;
  const int batch = int(running.size() + ready.size());
  if (batch_state.batch() == 0) batch_state = model.new_state(batch);
  else batch_state.set_batch(batch);
  for (std::unique_ptr<Sequence>& seq : ready) {
    const int slot = int(running.size());
    batch_state.copy_slot(seq->solo, 0, slot);
    std::copy(seq->prefill_logits.begin(), seq->prefill_logits.end(), logits.begin() + slot * vocab);
    seq->solo = InferenceState();
    seq->prefill_logits = std::vector<float>();
    running.push_back(std::move(seq));
  }
}

// One token for every running sequence, from its row of `logits`; finished ones leave.
void Engine::Impl::sample_running() {
  leaving.clear();
  for (size_t s = 0; s < running.size(); ++s) {
    Sequence& seq = *running[s];
    try {
      const int32_t token = seq.progress.sample(seq.sampler, logits.data() + s * size_t(vocab));
      const bool done = seq.progress.append(token);
      // Counted before the client can see the token, so a scrape after a reply includes it.
      update_metrics([](EngineMetrics& m) { ++m.generated_tokens_total; });
      if (seq.progress.ids().size() == 1) on_first_token(seq);
      StreamEvent event;
      event.ids.push_back(token);
      event.text = std::string(seq.progress.take_ready_text());
      StreamControl::push(*seq.stream, std::move(event));
      if (!done) {
        next_tokens[s] = token;
        continue;
      }
      finish(seq, int(s));
    } catch (const std::exception& e) {
      end_with_error(seq, e.what());
    }
    leaving.push_back(int(s));
  }
  remove_slots(leaving);
}

void Engine::Impl::step_running() {
  if (running.empty()) return;
  model.step(next_tokens.data(), batch_state, logits.data());
  update_metrics([&](EngineMetrics& m) {
    ++m.steps_total;
    m.batch_size.observe(double(running.size()));
  });
}

void Engine::Impl::drop_cancelled() {
  auto cancel = [&](Sequence& seq) {
    StreamControl::set_timing(*seq.stream, seq.timing);
    StreamControl::push(*seq.stream, error_event("cancelled"));
    update_metrics([](EngineMetrics& m) { ++m.requests_cancelled; });
  };
  std::erase_if(prefilling, [&](const std::unique_ptr<Sequence>& seq) {
    if (!seq->stream->cancelled()) return false;
    cancel(*seq);
    return true;
  });
  leaving.clear();
  for (size_t s = 0; s < running.size(); ++s)
    if (running[s]->stream->cancelled()) {
      cancel(*running[s]);
      leaving.push_back(int(s));
    }
  remove_slots(leaving);
}

// Removes `slots` (ascending) from the batch: the last running sequence moves into each hole,
// highest hole first, so only leaving slots are overwritten; the state then shrinks in place.
// Its next token and logits row move along (cancelled sequences leave before sampling).
void Engine::Impl::remove_slots(const std::vector<int>& slots) {
  if (slots.empty()) return;
  for (auto hole = slots.rbegin(); hole != slots.rend(); ++hole) {
    const int last = int(running.size()) - 1;
    if (*hole != last) {
      batch_state.copy_slot(batch_state, last, *hole);
      running[size_t(*hole)] = std::move(running[size_t(last)]);
      next_tokens[size_t(*hole)] = next_tokens[size_t(last)];
      std::copy_n(logits.begin() + last * vocab, vocab, logits.begin() + *hole * vocab);
    }
    running.pop_back();
  }
  if (!running.empty()) batch_state.set_batch(int(running.size()));
}

void Engine::Impl::on_first_token(Sequence& seq) {
  seq.first_token = Clock::now();
  seq.timing.first_token_seconds = seconds(seq.first_token - seq.submitted);
  update_metrics([&](EngineMetrics& m) { m.time_to_first_token.observe(seq.timing.first_token_seconds); });
}

// The sequence in `slot` ended normally: keep its final state, report timing, send Finished.
void Engine::Impl::finish(Sequence& seq, int slot) {
  if (options.kept_final_states > 0) {
    auto saved = std::make_shared<SavedState>();
    saved->tokens = seq.tokens;
    saved->tokens.insert(saved->tokens.end(), seq.progress.ids().begin(), seq.progress.ids().end());
    saved->state = model.new_state(1);
    saved->state.copy_slot(batch_state, slot, 0);
    keep_final_state(seq.stream->id(), std::move(saved));
  }
  seq.timing.new_tokens = int64_t(seq.progress.ids().size());
  seq.timing.decode_seconds = seconds(Clock::now() - seq.first_token);
  StreamControl::set_timing(*seq.stream, seq.timing);
  if (seq.timing.new_tokens > 1)  // recorded before the client can see the end
    update_metrics([&](EngineMetrics& m) {
      m.time_per_output_token.observe(seq.timing.decode_seconds / double(seq.timing.new_tokens - 1));
    });
  StreamEvent done;
  done.kind = StreamEvent::Kind::Finished;
  done.reason = seq.progress.reason();
  StreamControl::push(*seq.stream, std::move(done));
}

void Engine::Impl::keep_final_state(const std::string& completion_id, std::shared_ptr<const SavedState> state) {
  std::lock_guard lock(mutex);
  kept.emplace_front(completion_id, KeptState{std::move(state), {}});
  kept_by_id[completion_id] = kept.begin();
  while (int64_t(kept.size()) > options.kept_final_states) {
    kept_by_id.erase(kept.back().first);
    kept.pop_back();
  }
}

void Engine::Impl::end_with_error(Sequence& seq, const std::string& message) {
  seq.timing.new_tokens = int64_t(seq.progress.ids().size());
  StreamControl::set_timing(*seq.stream, seq.timing);
  StreamControl::push(*seq.stream, error_event(message));
  update_metrics([](EngineMetrics& m) { ++m.requests_failed; });
}

void Engine::Impl::end_all(const std::string& message) {
  for (auto& seq : prefilling) end_with_error(*seq, message);
  for (auto& seq : running) end_with_error(*seq, message);
  prefilling.clear();
  running.clear();
}

// ---------------------------------------------------------------------------------------------

Engine::Engine(MambaModel& model, const Tokenizer* tokenizer, EngineOptions options)
    : options_(std::move(options)), impl_(std::make_unique<Impl>(model, tokenizer, options_)) {}

Engine::~Engine() = default;

std::shared_ptr<Stream> Engine::submit(CompletionRequest request) { return impl_->submit(std::move(request)); }
std::string Engine::save_state(const std::string& completion_id) { return impl_->save_state(completion_id); }
bool Engine::has_state(const std::string& state_id) const { return impl_->has_state(state_id); }
EngineMetrics Engine::metrics() const { return impl_->metrics(); }

}  // namespace mambacpp::serve
