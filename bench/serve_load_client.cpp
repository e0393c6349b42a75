// Streaming clients for the serve load test (see serve_load_client.h).
#include "serve_load_client.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace mambacpp::bench {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
constexpr size_t kMaxProblems = 10;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

httplib::Headers auth_headers(const LoadOptions& o) {
  if (o.api_key.empty()) return {};
  return {{"Authorization", "Bearer " + o.api_key}};
}

const char* completion_path(const LoadOptions& o) { return o.api == Api::OpenAI ? "/v1/completions" : "/completion"; }

std::string completion_body(const LoadOptions& o, const Reference& r, bool stream) {
  json body = {{"temperature", o.temperature}, {"seed", r.seed}, {"stream", stream}, {"return_tokens", true}};
  body["prompt"] = r.prompt_ids.empty() ? json(r.prompt) : json(r.prompt_ids);
  body[o.api == Api::OpenAI ? "max_tokens" : "n_predict"] = o.max_tokens;
  return body.dump();
}

// The object of a reply or stream event that carries `tokens`.
const json& token_holder(const json& message, Api api) {
  static const json none = json::object();
  if (api == Api::LlamaCpp) return message;
  return message.contains("choices") && !message["choices"].empty() ? message["choices"][0] : none;
}

// Splits a body of server-sent events into their `data:` payloads, across chunk boundaries.
class EventSplitter {
 public:
  template <typename OnData>
  void feed(const char* bytes, size_t size, OnData&& on_data) {
    buffer_.append(bytes, size);
    size_t end;
    while ((end = event_end()) != std::string::npos) {
      const std::string event = buffer_.substr(0, end);
      buffer_.erase(0, end + (buffer_.compare(end, 4, "\r\n\r\n") == 0 ? 4 : 2));
      std::istringstream lines(event);
      std::string line, data;
      while (std::getline(lines, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.rfind("data:", 0) != 0) continue;
        std::string_view payload = std::string_view(line).substr(5);
        if (!payload.empty() && payload.front() == ' ') payload.remove_prefix(1);
        if (!data.empty()) data += '\n';
        data += payload;
      }
      if (!data.empty()) on_data(data);
    }
  }
  bool empty() const { return buffer_.find_first_not_of("\r\n") == std::string::npos; }

 private:
  size_t event_end() const { return std::min(buffer_.find("\n\n"), buffer_.find("\r\n\r\n")); }
  std::string buffer_;
};

struct StreamOutcome {
  std::string error;  // empty when the stream was well-formed and complete
  std::vector<int32_t> tokens;
  double first_token = -1, last_token = -1;  // seconds after sending
};

// One streaming completion, read event by event.
StreamOutcome stream_completion(httplib::Client& client, const LoadOptions& o, const Reference& r) {
  StreamOutcome out;
  httplib::Request request;
  request.method = "POST";
  request.path = completion_path(o);
  request.headers = auth_headers(o);
  request.set_header("Content-Type", "application/json");
  request.body = completion_body(o, r, true);
  httplib::Response response;
  EventSplitter events;
  std::string error_body;
  bool done = false;
  const Clock::time_point sent = Clock::now();
  auto on_data = [&](const std::string& data) {
    if (done) {
      out.error = "data after [DONE]";
      return;
    }
    if (data == "[DONE]" && o.api == Api::OpenAI) {
      done = true;
      return;
    }
    const json message = json::parse(data, nullptr, false);
    if (message.is_discarded() || !message.is_object()) {
      out.error = "an event that is not JSON: " + data.substr(0, 200);
    } else if (message.contains("error")) {
      out.error = "error event: " + message["error"].dump();
    } else {
      const json& holder = token_holder(message, o.api);
      if (holder.contains("tokens") && !holder["tokens"].empty()) {
        for (const json& id : holder["tokens"]) out.tokens.push_back(id.get<int32_t>());
        out.last_token = seconds_since(sent);
        if (out.first_token < 0) out.first_token = out.last_token;
      }
      if (o.api == Api::LlamaCpp && message.value("stop", false)) done = true;  // its last event
    }
  };
  request.content_receiver = [&](const char* bytes, size_t size, uint64_t, uint64_t) {
    if (response.status != 200) {
      error_body.append(bytes, std::min(size, size_t(500)));
      return true;
    }
    events.feed(bytes, size, on_data);
    return out.error.empty();
  };
  httplib::Error error = httplib::Error::Success;
  const bool answered = client.send(request, response, error);
  if (!out.error.empty()) return out;
  if (!answered) out.error = "connection: " + httplib::to_string(error);
  else if (response.status != 200) out.error = "HTTP " + std::to_string(response.status) + ": " + error_body;
  else if (!done) out.error = "the stream ended early (no [DONE], or no final event)";
  else if (!events.empty()) out.error = "bytes after [DONE]";
  return out;
}

std::string describe_mismatch(const Reference& r, const std::vector<int32_t>& got) {
  size_t i = 0;
  while (i < got.size() && i < r.tokens.size() && got[i] == r.tokens[i]) ++i;
  std::ostringstream s;
  s << "prompt " << r.label() << " seed " << r.seed << ": " << got.size() << " ids streamed, reference "
    << r.tokens.size() << "; first difference at id " << i;
  if (i < got.size() && i < r.tokens.size()) s << " (" << got[i] << " vs " << r.tokens[i] << ")";
  return s.str();
}

// Adds one finished request to `result` (under the caller's lock).
void record(LoadResult& result, const Reference& r, const StreamOutcome& s) {
  ++result.requests;
  std::string problem;
  if (!s.error.empty()) {
    ++result.errors;
    problem = "prompt " + r.label() + ": " + s.error;
  } else {
    result.tokens += int64_t(s.tokens.size());
    if (s.tokens != r.tokens) {
      ++result.mismatches;
      problem = describe_mismatch(r, s.tokens);
    }
    if (s.first_token >= 0) result.time_to_first_token.push_back(s.first_token);
    if (s.tokens.size() >= 2)
      result.time_per_output_token.push_back((s.last_token - s.first_token) / double(s.tokens.size() - 1));
  }
  if (!problem.empty() && result.problems.size() < kMaxProblems) result.problems.push_back(problem);
}

// Samples the server's VmRSS every second until stopped.
class RssSampler {
 public:
  RssSampler(int pid, Clock::time_point start, std::vector<RssSample>& samples) {
    if (pid <= 0) return;
    thread_ = std::thread([=, this, &samples] {
      for (;;) {
        const int64_t bytes = resident_bytes(pid);
        if (bytes >= 0) samples.push_back({seconds_since(start), bytes});
        for (int i = 0; i < 10; ++i) {
          if (stop_) return;
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
      }
    });
  }
  ~RssSampler() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

std::string ms(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f ms", seconds * 1e3);
  return text;
}

}  // namespace

double percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t rank = size_t(std::ceil(q * double(values.size())));
  return values[std::clamp<size_t>(rank, 1, values.size()) - 1];
}

std::vector<std::string> default_prompts() {
  return {"Once upon a time",
          "The quick brown fox jumps over the lazy dog, and then",
          "Here is a short story about a robot who learns to paint:",
          "The capital of France is",
          "def fibonacci(n):",
          "In the beginning the Universe was created. This has made a lot of people very angry and been "
          "widely regarded as a bad move.",
          "Q: What is the meaning of life?\nA:",
          "A recipe for pancakes: first,"};
}

std::string Reference::label() const {
  return prompt_ids.empty() ? "\"" + prompt + "\"" : std::to_string(prompt_ids.size()) + " prompt ids";
}

std::vector<std::vector<int32_t>> random_id_prompts(int count, int64_t vocab_size, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> prompts(size_t(std::max(count, 0)));
  for (auto& ids : prompts) {
    ids.resize(8 + rng() % 57);
    for (int32_t& id : ids) id = int32_t(rng() % uint64_t(vocab_size));
  }
  return prompts;
}

std::vector<Reference> fetch_references(const LoadOptions& o) {
  const std::vector<std::string> prompts = o.prompts.empty() ? default_prompts() : o.prompts;
  httplib::Client client(o.host, o.port);
  client.set_read_timeout(std::chrono::seconds(300));
  std::vector<Reference> references;
  for (int i = 0; i < o.references; ++i) {
    Reference r;
    r.seed = uint64_t(1000 + i);
    if (o.id_prompts.empty()) r.prompt = prompts[size_t(i) % prompts.size()];
    else r.prompt_ids = o.id_prompts[size_t(i) % o.id_prompts.size()];
    const auto res = client.Post(completion_path(o), auth_headers(o), completion_body(o, r, false), "application/json");
    if (!res || res->status != 200)
      throw std::runtime_error("reference request for prompt " + r.label() + " failed: " +
                               (res ? "HTTP " + std::to_string(res->status) + " " + res->body
                                    : httplib::to_string(res.error())));
    const json reply = json::parse(res->body);
    const json& holder = token_holder(reply, o.api);
    if (!holder.contains("tokens")) throw std::runtime_error("the reply has no `tokens` (return_tokens): " + res->body);
    r.tokens = holder["tokens"].get<std::vector<int32_t>>();
    references.push_back(std::move(r));
  }
  return references;
}

LoadResult run_load(const LoadOptions& o, const std::vector<Reference>& references) {
  if (references.empty()) throw std::runtime_error("run_load needs at least one reference");
  LoadResult result;
  result.clients = o.clients;
  std::mutex mutex;
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds));
  std::vector<RssSample> rss;
  {
    RssSampler sampler(o.server_pid, start, rss);
    std::vector<std::thread> workers;
    for (int c = 0; c < o.clients; ++c) {
      workers.emplace_back([&, c] {
        std::mt19937_64 pick(o.seed * 1000003u + uint64_t(c));
        httplib::Client client(o.host, o.port);
        client.set_read_timeout(std::chrono::seconds(300));
        while (Clock::now() < deadline) {
          const Reference& r = references[pick() % references.size()];
          const StreamOutcome outcome = stream_completion(client, o, r);
          std::lock_guard lock(mutex);
          record(result, r, outcome);
        }
      });
    }
    for (auto& w : workers) w.join();
    result.seconds = seconds_since(start);
  }
  result.rss = std::move(rss);
  return result;
}

int64_t resident_bytes(int pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;  // "VmRSS:   123 kB"
  return -1;
}

std::string summary(const LoadResult& r) {
  std::ostringstream s;
  char rate[32];
  std::snprintf(rate, sizeof rate, "%.1f", r.tokens_per_second());
  s << r.clients << " clients: " << r.requests << " requests, " << r.errors << " errors, " << r.mismatches
    << " mismatches, " << r.tokens << " tokens in " << std::lround(r.seconds * 10) / 10.0 << " s = " << rate
    << " tokens/s; TTFT p50 " << ms(percentile(r.time_to_first_token, 0.5)) << " p99 "
    << ms(percentile(r.time_to_first_token, 0.99)) << "; TPOT p50 " << ms(percentile(r.time_per_output_token, 0.5))
    << " p99 " << ms(percentile(r.time_per_output_token, 0.99));
  if (!r.rss.empty()) {
    int64_t peak = 0;
    for (const RssSample& x : r.rss) peak = std::max(peak, x.bytes);
    s << "; server RSS first " << (r.rss.front().bytes >> 20) << " MiB, max " << (peak >> 20) << " MiB, last "
      << (r.rss.back().bytes >> 20) << " MiB (" << r.rss.size() << " samples)";
  }
  return s.str();
}

}  // namespace mambacpp::bench
