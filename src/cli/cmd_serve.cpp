// mambacpp serve: the HTTP completions server (src/serve): loads the model and its tokenizer,
// starts the batching engine and the HTTP server, prints the URL and serves until SIGINT or
// SIGTERM, then stops cleanly (open streams are cancelled).
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "serve/engine.h"
#include "serve/http_server.h"

namespace mambacpp::cli {
namespace {

struct ServeArgs {
  std::string model_dir, tokenizer, weights, threads, state_dir, api_key;
  std::string host = "127.0.0.1", port = "8080", device = "cpu";
  std::string max_batch = "32", max_queue = "64", state_cache_mib = "256";
  std::string max_prompt_tokens = "65536", max_tokens_limit = "65536", max_body_bytes = "1048576";
};

// The int flag `text`, which must lie in [lo, hi].
int64_t ranged(std::string_view flag, const std::string& text, int64_t lo, int64_t hi) {
  const int64_t v = parse_int_flag(flag, text);
  require_in_range(v >= lo && v <= hi, flag, text, cat("must be in [", lo, ", ", hi, "]"));
  return v;
}

// --state-dir, else $XDG_STATE_HOME/mambacpp/states, else ./mambacpp-states.
std::filesystem::path state_dir(const ServeArgs& a) {
  if (!a.state_dir.empty()) return a.state_dir;
  if (const char* xdg = std::getenv("XDG_STATE_HOME"); xdg && *xdg) return std::filesystem::path(xdg) / "mambacpp" / "states";
  return std::filesystem::current_path() / "mambacpp-states";
}

// The folder's own name ("hf-tiny-mamba"), echoed as the model in replies.
std::string model_name(const std::string& dir) {
  const std::filesystem::path p = std::filesystem::path(dir).lexically_normal();
  const std::string name = (p.has_filename() ? p : p.parent_path()).filename().string();
  return name.empty() || name == "." ? "mambacpp" : name;
}

volatile std::sig_atomic_t g_stop_signal = 0;
void on_stop_signal(int sig) { g_stop_signal = sig; }

void run_serve(const ServeArgs& a) {
  if (a.device == "cuda") fail("--device cuda: this build has no CUDA backend yet; use --device cpu");
  serve::EngineOptions engine_options;
  engine_options.max_batch = int(ranged("--max-batch", a.max_batch, 1, 1024));
  engine_options.max_queue = int(ranged("--max-queue", a.max_queue, 0, 4096));
  engine_options.state_cache_bytes = ranged("--state-cache-mib", a.state_cache_mib, 0, int64_t(1) << 30) << 20;
  engine_options.max_prompt_tokens = ranged("--max-prompt-tokens", a.max_prompt_tokens, 1, int64_t(1) << 30);
  engine_options.max_new_tokens_limit = ranged("--max-tokens-limit", a.max_tokens_limit, 1, int64_t(1) << 30);
  serve::ServerOptions server_options;
  server_options.host = a.host;
  server_options.port = int(ranged("--port", a.port, 0, 65535));
  server_options.max_body_bytes = size_t(ranged("--max-body-bytes", a.max_body_bytes, 1024, int64_t(1) << 30));
  server_options.api_key = a.api_key;
  if (const char* key = std::getenv("MAMBACPP_API_KEY"); server_options.api_key.empty() && key) server_options.api_key = key;
  apply_threads(a.threads);

  engine_options.state_dir = state_dir(a);
  std::error_code ec;
  std::filesystem::create_directories(engine_options.state_dir, ec);
  if (ec) fail("--state-dir ", engine_options.state_dir.string(), ": cannot create the folder: ", ec.message());

  check_model_dir(a.model_dir);
  const std::optional<Tokenizer> tokenizer = find_tokenizer(a.model_dir, a.tokenizer);
  MambaModel model = open_model(a.model_dir, a.weights);
  serve::ServedModel served;
  served.name = model_name(a.model_dir);
  served.vocab_size = model.config().vocab_size;
  if (model.config().eos_token_id) served.eos_id = int32_t(*model.config().eos_token_id);
  served.tokenizer = tokenizer ? &*tokenizer : nullptr;

  serve::Engine engine(model, served.tokenizer, engine_options);
  serve::HttpServer server(engine, served, server_options);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  server.start();
  std::printf("mambacpp serve: listening on %s (model %s%s, max batch %d, max queue %d, states in %s)\n",
              server.url().c_str(), served.name.c_str(), served.tokenizer ? "" : ", no tokenizer: token-id prompts only",
              engine_options.max_batch, engine_options.max_queue, engine_options.state_dir.c_str());
  std::fflush(stdout);
  while (g_stop_signal == 0 && server.running()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  server.stop();
  if (!g_stop_signal) fail("the HTTP server stopped unexpectedly");
  std::fprintf(stderr, "mambacpp serve: stopped on signal %d\n", int(g_stop_signal));
}

}  // namespace

void register_serve(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand("serve", "Serve completions over HTTP (OpenAI-style API, continuous batching)");
  cmd->footer(
      "Endpoints: POST /v1/completions (OpenAI format; \"stream\": true for server-sent events),\n"
      "POST /v1/state/save and /v1/state/load, POST /tokenize and /detokenize, GET /health, GET /metrics\n"
      "(Prometheus), GET / (playground page). Requests beyond --max-batch running and --max-queue waiting\n"
      "get 503 with Retry-After. With --api-key (or $MAMBACPP_API_KEY) every endpoint but / and /health\n"
      "needs \"Authorization: Bearer KEY\". Prints the URL once listening (--port 0 picks a free port);\n"
      "SIGINT or SIGTERM stops it. See docs/SERVING.md.");
  add_model_flag(*cmd, a->model_dir);
  cmd->add_option("--host", a->host, "Address to listen on (0.0.0.0 for every interface)")->capture_default_str();
  cmd->add_option("--port", a->port, "TCP port, 0 = any free one")->type_name("N")->capture_default_str();
  cmd->add_option("--max-batch", a->max_batch, "Sequences decoded together, in [1, 1024]")->type_name("N")->capture_default_str();
  cmd->add_option("--max-queue", a->max_queue, "Requests waiting for a batch slot before 503, in [0, 4096]")
      ->type_name("N")
      ->capture_default_str();
  add_threads_flag(*cmd, a->threads);
  cmd->add_option("--device", a->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  cmd->add_option("--api-key", a->api_key, "Require \"Authorization: Bearer KEY\" (default: $MAMBACPP_API_KEY if set)")
      ->type_name("KEY");
  cmd->add_option("--state-cache-mib", a->state_cache_mib, "Prefix-state cache budget in MiB, 0 = off")
      ->type_name("N")
      ->capture_default_str();
  cmd->add_option("--state-dir", a->state_dir,
                  "Folder for /v1/state/save (default: $XDG_STATE_HOME/mambacpp/states, else ./mambacpp-states)")
      ->type_name("DIR");
  cmd->add_option("--max-prompt-tokens", a->max_prompt_tokens, "Longest prompt accepted, in tokens")
      ->type_name("N")
      ->capture_default_str();
  cmd->add_option("--max-tokens-limit", a->max_tokens_limit, "Largest max_tokens a request may ask for")
      ->type_name("N")
      ->capture_default_str();
  cmd->add_option("--max-body-bytes", a->max_body_bytes, "Largest request body (larger ones get 413)")
      ->type_name("N")
      ->capture_default_str();
  cmd->add_option("--tokenizer", a->tokenizer, "tokenizer.json to use (default: the one in the --model folder)")
      ->type_name("FILE");
  add_weights_flag(*cmd, a->weights);
  cmd->callback([a] { run_serve(*a); });
}

}  // namespace mambacpp::cli
