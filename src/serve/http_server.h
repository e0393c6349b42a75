// The HTTP front of the engine (cpp-httplib): OpenAI-style completions (plain and streamed as
// server-sent events), tokenize/detokenize, saved states, health, Prometheus metrics and the
// playground page. Each connection has a thread of its own (max_batch + max_queue + a few, so
// every stream the engine may hold gets one, plus room for /health and /metrics); it parses the
// body (serve/request.h), submits to the engine and then relays the request's Stream, polling it
// with a short timeout so that a client gone away (a write fails or the socket stops being
// writable) cancels its sequence at once. The engine does all the model work.
//
//   GET  /                  the playground (serve/playground.h)
//   GET  /health            {"status": "ok"}                                  never needs the key
//   GET  /metrics           Prometheus text (serve/prometheus.h)
//   POST /v1/completions    OpenAI text_completion, "stream": true for SSE
//   POST /v1/state/save     {"id": "cmpl-..."} -> {"state_id": "st-..."}
//   POST /v1/state/load     {"state_id": ..., completion fields} -> as /v1/completions
//   POST /tokenize          {"content": text} -> {"tokens": [...]}
//   POST /detokenize        {"tokens": [...]} -> {"content": text}
// Errors: 400 (invalid request, naming the field), 401 (API key), 404, 413 (body too large),
// 503 + Retry-After (queue full), 500; all with an OpenAI-style {"error": {...}} body.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "serve/engine.h"

namespace mambacpp {
class Tokenizer;
}

namespace mambacpp::serve {

// What the server needs to know about the model it serves.
struct ServedModel {
  std::string name = "mambacpp";      // echoed as "model" unless the request names one
  int64_t vocab_size = 0;
  std::optional<int32_t> eos_id;      // generation stops there unless a request says ignore_eos
  const Tokenizer* tokenizer = nullptr;  // null: id prompts only
};

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                    // 0: any free port (port() tells which)
  std::string api_key;                // non-empty: every endpoint but / and /health needs "Authorization: Bearer KEY"
  size_t max_body_bytes = 1 << 20;    // larger bodies get 413
  int spare_threads = 8;              // connection threads beyond max_batch + max_queue
  std::chrono::seconds io_timeout{30};            // socket read and write timeouts
  std::chrono::milliseconds poll_interval{25};    // how often a waiting request checks its client
  int retry_after_seconds = 1;        // sent with 503
};

class HttpServer {
 public:
  // The engine and model.tokenizer must outlive the server.
  HttpServer(Engine& engine, ServedModel model, ServerOptions options);
  ~HttpServer();  // stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port and serves on a background thread. Returns the bound port. BadInput when the
  // address cannot be bound. Ignores SIGPIPE for the whole process (a client that disconnects
  // must fail a write, not kill the server).
  int start();
  // Stops accepting, ends open streams (their sequences are cancelled) and joins. Idempotent.
  void stop();
  bool running() const;
  int port() const;
  std::string url() const;  // "http://HOST:PORT"

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mambacpp::serve
