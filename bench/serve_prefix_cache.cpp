// Time to first token through the serving engine for a long shared prefix, cold versus started
// from the prefix-state cache, on random weights of a published shape (default: 130m, 4,000
// tokens). Each repetition uses a fresh random prefix: request 1 (prefix + suffix A) prefills
// cold and fills the cache; request 2 (prefix + suffix B) resumes from the last cached boundary;
// request 3 repeats request 2 exactly (its end state and logits are cached: no prefill at all).
//
//   serve_prefix_cache [--shape 130m] [--prefix 4000] [--suffix 8] [--reps 3] [--threads N]
//                      [--cache-every 512]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "core/rng.h"
#include "core/threads.h"
#include "model/mamba_model.h"
#include "serve/engine.h"

using namespace mambacpp;

namespace {

struct Args {
  std::string shape = "130m";
  int64_t prefix = 4000, suffix = 8, cache_every = 512;
  int reps = 3, threads = 0;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--shape") a.shape = value;
    else if (flag == "--prefix") a.prefix = std::stoll(value);
    else if (flag == "--suffix") a.suffix = std::stoll(value);
    else if (flag == "--reps") a.reps = std::stoi(value);
    else if (flag == "--threads") a.threads = std::stoi(value);
    else if (flag == "--cache-every") a.cache_every = std::stoll(value);
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      std::exit(2);
    }
  }
  return a;
}

std::vector<int32_t> random_tokens(int64_t n, Rng& rng, int64_t vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = int32_t(rng.below(uint64_t(vocab)));
  return ids;
}

struct Stats {
  std::vector<double> values;
  double mean() const {
    double s = 0;
    for (double v : values) s += v;
    return s / double(values.size());
  }
  double stddev() const {
    const double m = mean();
    double s = 0;
    for (double v : values) s += (v - m) * (v - m);
    return values.size() > 1 ? std::sqrt(s / double(values.size() - 1)) : 0.0;
  }
};

// Submits one request (greedy, one new token) and returns its timing once it finished.
serve::RequestTiming first_token(serve::Engine& engine, std::vector<int32_t> prompt) {
  serve::CompletionRequest request;
  request.prompt = std::move(prompt);
  request.generation.sampling.temperature = 0;
  request.generation.max_new_tokens = 1;
  const std::shared_ptr<serve::Stream> stream = engine.submit(std::move(request));
  for (;;) {
    const std::optional<serve::StreamEvent> e = stream->next(std::chrono::milliseconds(1000));
    if (!e || e->kind == serve::StreamEvent::Kind::Tokens) continue;
    if (e->kind == serve::StreamEvent::Kind::Error) {
      std::fprintf(stderr, "request failed: %s\n", e->error.c_str());
      std::exit(1);
    }
    return stream->timing();
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  if (args.threads > 0) set_num_threads(args.threads);
  const MambaConfig config = published_shape(args.shape);
  MambaModel model = MambaModel::random(config, 1);
  serve::EngineOptions options;
  options.cache_every = args.cache_every;
  serve::Engine engine(model, nullptr, options);

  std::printf("command:");
  for (int i = 0; i < argc; ++i) std::printf(" %s", argv[i]);
  std::printf("\nmachine: %s, %d threads\n", cpu_features().model_name.c_str(), num_threads());
  std::printf("model: random %s (d_model %lld, %lld layers, vocab %lld, F32); prefix %lld + suffix %lld tokens; "
              "cache_every %lld, prefill_chunk_tokens %lld\n",
              args.shape.c_str(), (long long)config.d_model, (long long)config.n_layer, (long long)config.vocab_size,
              (long long)args.prefix, (long long)args.suffix, (long long)options.cache_every,
              (long long)options.prefill_chunk_tokens);

  Rng rng(42);
  Stats cold, cached, repeat;
  int64_t cached_tokens = 0;
  for (int r = 0; r < args.reps; ++r) {
    const std::vector<int32_t> prefix = random_tokens(args.prefix, rng, config.vocab_size);
    std::vector<int32_t> a = prefix, b = prefix;
    const std::vector<int32_t> suffix_a = random_tokens(args.suffix, rng, config.vocab_size),
                               suffix_b = random_tokens(args.suffix, rng, config.vocab_size);
    a.insert(a.end(), suffix_a.begin(), suffix_a.end());
    b.insert(b.end(), suffix_b.begin(), suffix_b.end());
    cold.values.push_back(first_token(engine, a).first_token_seconds);
    const serve::RequestTiming hit = first_token(engine, b);
    cached.values.push_back(hit.first_token_seconds);
    cached_tokens = hit.cached_prompt_tokens;
    repeat.values.push_back(first_token(engine, b).first_token_seconds);
    std::printf("rep %d: cold %.3f s, cached %.3f s (%lld of %zu prompt tokens from the cache), repeat %.4f s\n", r + 1,
                cold.values.back(), cached.values.back(), (long long)cached_tokens, b.size(),
                repeat.values.back());
  }
  std::printf("time to first token, mean +- stddev over %d reps:\n", args.reps);
  std::printf("  cold             %.3f +- %.3f s\n", cold.mean(), cold.stddev());
  std::printf("  cached prefix    %.3f +- %.3f s  (%lld tokens resumed)  speedup %.1fx\n", cached.mean(),
              cached.stddev(), (long long)cached_tokens, cold.mean() / cached.mean());
  std::printf("  same prompt      %.4f +- %.4f s  speedup %.0fx\n", repeat.mean(), repeat.stddev(),
              cold.mean() / repeat.mean());
  const serve::EngineMetrics m = engine.metrics();
  std::printf("cache: %lld entries, %.1f MiB\n", (long long)m.cache_entries, double(m.cache_bytes) / (1 << 20));
  return 0;
}
