#include "serve/http_server.h"

#include <csignal>
#include <ctime>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include <sys/socket.h>

#include <httplib.h>

#include "serve/playground.h"
#include "serve/prometheus.h"
#include "serve/request.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

namespace mambacpp::serve {

using httplib::DataSink;
using httplib::Request;
using httplib::Response;
using nlohmann::json;

namespace {

constexpr const char* kJson = "application/json";
constexpr int kListenBacklog = 1024;  // connections waiting to be accepted

void send_error(Response& res, int status, const std::string& body) {
  res.status = status;
  res.set_content(body, kJson);
}

// Compares without stopping at the first difference, so response times do not reveal how much
// of a guessed key was right (its length is no secret worth hiding).
bool same_secret(std::string_view given, std::string_view key) {
  if (given.size() != key.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < key.size(); ++i) diff |= uint8_t(given[i] ^ key[i]);
  return diff == 0;
}

// One completion in flight: its stream and what its reply needs.
struct Relay {
  std::shared_ptr<Stream> stream;
  std::string model;
  int64_t created = 0;
  bool return_tokens = false;
  Usage usage;
  bool finished = false;  // the final event was relayed
};

}  // namespace

struct HttpServer::Impl {
  Engine& engine;
  ServedModel model;
  ServerOptions options;
  RequestLimits limits;
  httplib::Server server;
  std::thread thread;
  std::atomic<bool> stopping{false};
  std::atomic<bool> listen_ended{false};  // the listening thread returned
  int port = 0;

  std::mutex mutex;  // guards the two below
  std::map<int, int64_t> responses_by_status;
  std::mt19937_64 seeds{std::random_device{}()};

  Impl(Engine& e, ServedModel m, ServerOptions o) : engine(e), model(std::move(m)), options(std::move(o)) {
    limits.vocab_size = model.vocab_size;
    limits.max_prompt_tokens = engine.options().max_prompt_tokens;
    limits.max_new_tokens = engine.options().max_new_tokens_limit;
    configure();
    routes();
  }

  void configure() {
    const size_t threads = size_t(engine.options().max_batch + engine.options().max_queue + options.spare_threads);
    server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    server.set_payload_max_length(options.max_body_bytes);
    server.set_read_timeout(options.io_timeout);
    server.set_write_timeout(options.io_timeout);
    server.set_pre_routing_handler([this](const Request& req, Response& res) { return authorize(req, res); });
    server.set_error_handler(httplib::Server::HandlerWithResponse(
        [this](const Request& req, Response& res) { return fill_error_body(req, res); }));
    server.set_logger([this](const Request&, const Response& res) {
      std::lock_guard lock(mutex);
      ++responses_by_status[res.status];
    });
  }

  void routes() {
    server.Get("/", [](const Request&, Response& res) {
      res.set_content(std::string(playground_html()), "text/html; charset=utf-8");
    });
    server.Get("/health", [](const Request&, Response& res) { res.set_content(R"({"status":"ok"})", kJson); });
    server.Get("/metrics", guarded([this](const Request&, Response& res) { metrics(res); }));
    server.Post("/v1/completions", guarded([this](const Request& req, Response& res) { completion(req, res, false); }));
    server.Post("/v1/state/load", guarded([this](const Request& req, Response& res) { completion(req, res, true); }));
    server.Post("/v1/state/save", guarded([this](const Request& req, Response& res) { save_state(req, res); }));
    server.Post("/tokenize", guarded([this](const Request& req, Response& res) { tokenize(req, res); }));
    server.Post("/detokenize", guarded([this](const Request& req, Response& res) { detokenize(req, res); }));
  }

  // A handler whose refusals become error replies: RequestError with its own status, other
  // BadInput (the engine's checks) 400, anything else 500.
  template <class F>
  httplib::Server::Handler guarded(F handler) {
    return [handler](const Request& req, Response& res) {
      try {
        handler(req, res);
      } catch (const RequestError& e) {
        send_error(res, e.status(), error_body(e));
      } catch (const Error& e) {
        if (e.kind() == ErrorKind::BadInput)
          send_error(res, 400, error_body(e.what(), "invalid_request_error", ""));
        else
          send_error(res, 500, error_body(e.what(), "server_error", ""));
      } catch (const std::exception& e) {
        send_error(res, 500, error_body(e.what(), "server_error", ""));
      }
    };
  }

  httplib::Server::HandlerResponse authorize(const Request& req, Response& res) {
    if (options.api_key.empty() || req.path == "/" || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    const std::string header = req.get_header_value("Authorization");
    const std::string_view bearer = "Bearer ";
    if (header.rfind(bearer, 0) == 0 && same_secret(std::string_view(header).substr(bearer.size()), options.api_key))
      return httplib::Server::HandlerResponse::Unhandled;
    res.set_header("WWW-Authenticate", "Bearer");
    send_error(res, 401,
               error_body(header.empty() ? "an API key is required: send \"Authorization: Bearer KEY\""
                                         : "the API key is not valid",
                          "authentication_error", ""));
    return httplib::Server::HandlerResponse::Handled;
  }

  // Error replies httplib makes itself (no route, body too large, a malformed HTTP request) get
  // the same JSON body as ours.
  httplib::Server::HandlerResponse fill_error_body(const Request& req, Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string message;
    switch (res.status) {
      case 404: message = cat("no such endpoint: ", req.method, " ", req.path); break;
      case 413: message = cat("the body is larger than ", options.max_body_bytes, " bytes"); break;
      default: message = cat("the request failed with HTTP status ", res.status);
    }
    res.set_content(error_body(message, res.status >= 500 ? "server_error" : "invalid_request_error", ""), kJson);
    return httplib::Server::HandlerResponse::Handled;
  }

  void metrics(Response& res) {
    std::map<int, int64_t> responses;
    {
      std::lock_guard lock(mutex);
      responses = responses_by_status;
    }
    res.set_content(prometheus_text(engine.metrics(), responses), kPrometheusContentType);
  }

  uint64_t random_seed() {
    std::lock_guard lock(mutex);
    return seeds();
  }

  void completion(const Request& req, Response& res, bool require_state) {
    CompletionParams p = parse_completion(parse_body(req.body, limits), model.tokenizer, model.eos_id, limits, require_state);
    if (!p.seed_given) p.request.generation.sampling.seed = random_seed();
    if (p.request.start_state && !engine.has_state(*p.request.start_state))
      throw RequestError(400, "state_id", cat("state_id: no saved state ", *p.request.start_state));
    auto relay = std::make_shared<Relay>();
    relay->model = p.model.empty() ? model.name : p.model;
    relay->created = int64_t(std::time(nullptr));
    relay->return_tokens = p.return_tokens;
    relay->usage.prompt_tokens = int64_t(p.request.prompt.size());
    relay->stream = engine.submit(std::move(p.request));
    if (!relay->stream) {
      res.set_header("Retry-After", std::to_string(options.retry_after_seconds));
      send_error(res, 503, error_body("the server is busy (the queue is full); retry later", "server_error", ""));
      return;
    }
    if (p.stream)
      stream_reply(relay, res);
    else
      whole_reply(*relay, res);
  }

  // Waits for the whole completion. (A client that leaves meanwhile is noticed only at the end:
  // nothing is written before.)
  void whole_reply(Relay& relay, Response& res) {
    std::string text;
    std::vector<int32_t> ids;
    while (true) {
      if (stopping) {
        relay.stream->cancel();
        throw RequestError(503, "", "the server is shutting down", "server_error");
      }
      std::optional<StreamEvent> event = relay.stream->next(options.poll_interval);
      if (!event) continue;
      switch (event->kind) {
        case StreamEvent::Kind::Tokens:
          text += event->text;
          ids.insert(ids.end(), event->ids.begin(), event->ids.end());
          break;
        case StreamEvent::Kind::Finished:
          relay.usage.completion_tokens = int64_t(ids.size());
          res.set_content(json_text(completion_reply(relay.stream->id(), relay.created, relay.model, text,
                                                     relay.return_tokens ? &ids : nullptr, event->reason, relay.usage)),
                          kJson);
          return;
        case StreamEvent::Kind::Error: throw RequestError(500, "", event->error, "server_error");
      }
    }
  }

  // Server-sent events, one chunk per Tokens event; the last chunk carries finish_reason and
  // usage, then "data: [DONE]". A failed write, a socket no longer writable or a server stopping
  // cancels the sequence.
  void stream_reply(const std::shared_ptr<Relay>& relay, Response& res) {
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, relay](size_t, DataSink& sink) {
          if (!stopping && relay_one_event(*relay, sink)) return true;
          relay->stream->cancel();
          return false;
        },
        [relay](bool) {
          if (!relay->finished) relay->stream->cancel();
        });
  }

  // False when the client is gone.
  bool relay_one_event(Relay& relay, DataSink& sink) {
    std::optional<StreamEvent> event = relay.stream->next(options.poll_interval);
    if (!event) return sink.is_writable();
    const auto write = [&sink](const std::string& s) { return sink.write(s.data(), s.size()); };
    const std::string& id = relay.stream->id();
    switch (event->kind) {
      case StreamEvent::Kind::Tokens:
        relay.usage.completion_tokens += int64_t(event->ids.size());
        if (event->text.empty() && !relay.return_tokens) return true;
        return write(stream_chunk(id, relay.created, relay.model, event->text, relay.return_tokens ? &event->ids : nullptr,
                                  std::nullopt, std::nullopt));
      case StreamEvent::Kind::Finished: {
        const std::vector<int32_t> none;
        relay.finished = true;
        const bool ok = write(stream_chunk(id, relay.created, relay.model, "", relay.return_tokens ? &none : nullptr,
                                           event->reason, relay.usage)) &&
                        write(std::string(kStreamDone));
        sink.done();
        return ok;
      }
      case StreamEvent::Kind::Error: {
        relay.finished = true;
        const bool ok = write(stream_error(event->error)) && write(std::string(kStreamDone));
        sink.done();
        return ok;
      }
    }
    return false;
  }

  void save_state(const Request& req, Response& res) {
    const std::string id = parse_state_save(parse_body(req.body, limits));
    std::string state_id;
    try {
      state_id = engine.save_state(id);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::BadInput) throw;
      throw RequestError(400, "id", cat("id: ", e.what()));
    }
    res.set_content(json_text({{"state_id", state_id}}), kJson);
  }

  void tokenize(const Request& req, Response& res) {
    res.set_content(json_text({{"tokens", parse_tokenize(parse_body(req.body, limits), model.tokenizer, limits)}}), kJson);
  }

  void detokenize(const Request& req, Response& res) {
    const std::vector<int32_t> ids = parse_detokenize(parse_body(req.body, limits), model.tokenizer, limits);
    res.set_content(json_text({{"content", text::replace_invalid_utf8(model.tokenizer->decode(ids))}}), kJson);
  }
};

HttpServer::HttpServer(Engine& engine, ServedModel model, ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, std::move(model), std::move(options))) {}

HttpServer::~HttpServer() { stop(); }

int HttpServer::start() {
  MAMBACPP_CHECK(!impl_->thread.joinable());
  std::signal(SIGPIPE, SIG_IGN);
  const ServerOptions& o = impl_->options;
  // Debian's libcpp-httplib is compiled with a listen backlog of 5, which refuses connections when
  // dozens of clients connect at once: note the listening socket as httplib creates it and widen
  // its backlog after the bind (listen() again on a listening socket only changes the backlog).
  int listen_fd = -1;
  impl_->server.set_socket_options([&listen_fd](socket_t sock) {
    httplib::default_socket_options(sock);
    listen_fd = sock;
  });
  const int port = o.port == 0 ? impl_->server.bind_to_any_port(o.host)
                               : (impl_->server.bind_to_port(o.host, o.port) ? o.port : -1);
  if (port <= 0)
    fail("cannot listen on ", o.host, ":", o.port, " (is the port taken, or the host not an address of this machine?)");
  if (listen_fd >= 0) ::listen(listen_fd, kListenBacklog);
  impl_->port = port;
  impl_->thread = std::thread([this] {
    impl_->server.listen_after_bind();
    impl_->listen_ended = true;
  });
  // httplib's stop() does nothing until the thread has entered its accept loop: wait for that.
  while (!impl_->server.is_running() && !impl_->listen_ended) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (impl_->listen_ended) fail("the HTTP server on ", o.host, ":", port, " stopped as it started");
  return port;
}

void HttpServer::stop() {
  impl_->stopping = true;
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

bool HttpServer::running() const { return !impl_->stopping && !impl_->listen_ended; }

int HttpServer::port() const { return impl_->port; }

std::string HttpServer::url() const {
  const std::string& host = impl_->options.host;
  return cat("http://", host.find(':') != std::string::npos ? "[" + host + "]" : host, ":", impl_->port);
}

}  // namespace mambacpp::serve
