#include "serve/prometheus.h"

#include <charconv>
#include <cmath>

namespace mambacpp::serve {
namespace {

// The shortest text that reads back as the same double; "+Inf", "-Inf", "NaN" as Prometheus spells them.
std::string number(double x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x > 0 ? "+Inf" : "-Inf";
  char buf[32];
  const auto end = std::to_chars(buf, buf + sizeof buf, x).ptr;
  return std::string(buf, end);
}

class Exposition {
 public:
  void family(const std::string& name, const char* type, const char* help) {
    out_ += "# HELP mambacpp_" + name + " " + help + "\n# TYPE mambacpp_" + name + " " + type + "\n";
  }
  void sample(const std::string& name, const std::string& labels, const std::string& value) {
    out_ += "mambacpp_" + name + (labels.empty() ? "" : "{" + labels + "}") + " " + value + "\n";
  }
  void counter(const std::string& name, const char* help, int64_t value) {
    family(name, "counter", help);
    sample(name, "", std::to_string(value));
  }
  void gauge(const std::string& name, const char* help, int64_t value) {
    family(name, "gauge", help);
    sample(name, "", std::to_string(value));
  }
  void histogram(const std::string& name, const char* help, const EngineMetrics::Histogram& h) {
    family(name, "histogram", help);
    for (size_t i = 0; i < h.upper_bounds.size() && i < h.counts.size(); ++i)
      sample(name + "_bucket", "le=\"" + number(h.upper_bounds[i]) + "\"", std::to_string(h.counts[i]));
    sample(name + "_bucket", "le=\"+Inf\"", std::to_string(h.count));
    sample(name + "_sum", "", number(h.sum));
    sample(name + "_count", "", std::to_string(h.count));
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

}  // namespace

std::string prometheus_text(const EngineMetrics& m, const std::map<int, int64_t>& http_responses) {
  Exposition e;
  e.counter("requests_total", "Completion requests accepted into the queue.", m.requests_total);
  e.counter("requests_rejected_total", "Completion requests refused because the queue was full (HTTP 503).",
            m.requests_rejected);
  e.counter("requests_cancelled_total", "Completion requests cancelled before they finished (client gone).",
            m.requests_cancelled);
  e.counter("prompt_tokens_total", "Prompt tokens of accepted requests.", m.prompt_tokens_total);
  e.counter("generated_tokens_total", "Tokens generated.", m.generated_tokens_total);
  e.counter("state_cache_hits_total", "Prefills that started from a cached prefix state.", m.cache_hits);
  e.counter("state_cache_misses_total", "Prefills that found no cached prefix state.", m.cache_misses);
  e.counter("state_cache_hit_tokens_total", "Prompt tokens skipped thanks to cached prefix states.", m.cache_hit_tokens);
  e.gauge("state_cache_bytes", "Bytes held by the prefix-state cache.", m.cache_bytes);
  e.gauge("state_cache_entries", "States held by the prefix-state cache.", m.cache_entries);
  e.gauge("requests_running", "Sequences in the running batch now.", m.running);
  e.gauge("queue_length", "Requests waiting to be admitted to the batch.", m.queued);
  e.histogram("time_to_first_token_seconds", "Time from submission to the first sampled token.", m.time_to_first_token);
  e.histogram("time_per_output_token_seconds", "Decode time per generated token after the first, per request.",
              m.time_per_output_token);
  e.histogram("batch_size", "Sequences stepped together, per decode step.", m.batch_size);
  e.family("http_responses_total", "counter", "HTTP responses sent, by status code.");
  for (const auto& [status, count] : http_responses)
    e.sample("http_responses_total", "code=\"" + std::to_string(status) + "\"", std::to_string(count));
  return e.take();
}

}  // namespace mambacpp::serve
