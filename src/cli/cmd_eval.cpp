// mambacpp eval: a model's loss and perplexity on a prepared data folder's val.tokens, over the
// same deterministic windows the trainer measures its val loss on (src/train/evaluation.h).
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "train/evaluation.h"
#include "train/token_data.h"

namespace mambacpp::cli {
namespace {

namespace fs = std::filesystem;

struct EvalArgs {
  std::string model_dir, data, threads;
  std::string batch = "8", seq_len = "256", tokens = "0";
};

// A data folder's val.tokens, or a token file named directly.
fs::path token_file(const std::string& data) {
  std::error_code ec;
  if (!fs::is_directory(data, ec)) {
    if (!fs::exists(data, ec)) fail("--data ", data, ": no such folder or file");
    return data;
  }
  const fs::path val = fs::path(data) / "val.tokens";
  if (!fs::exists(val, ec)) fail("--data ", data, ": holds no val.tokens (expected a folder written by `mambacpp prepare`)");
  return val;
}

// A value that parses but is out of range is bad input (exit 1), as for every command.
int64_t int_flag(std::string_view flag, const std::string& text, int64_t min, int64_t max) {
  const int64_t v = parse_int_flag(flag, text);
  require_in_range(v >= min && v <= max, flag, text, cat("must be in [", min, ", ", max, "]"));
  return v;
}

void run_eval(const EvalArgs& a) {
  const int64_t batch = int_flag("--batch", a.batch, 1, int64_t(1) << 20);
  const int64_t seq_len = int_flag("--seq-len", a.seq_len, 1, int64_t(1) << 30);
  const int64_t tokens = int_flag("--tokens", a.tokens, 0, INT64_MAX);
  apply_threads(a.threads);
  const TokenFile file = TokenFile::open(token_file(a.data));
  MambaModel model = open_model(a.model_dir, "");
  const auto start = std::chrono::steady_clock::now();
  const MambaModel::Loss loss = evaluate_loss(model, file, int(batch), seq_len, tokens);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  write_stdout(cat("loss ", std::to_string(loss.mean()), "\nperplexity ", std::to_string(std::exp(loss.mean())), "\n"));
  std::fprintf(stderr, "eval: %lld targets of %s in windows of %lld, %.1f s\n", static_cast<long long>(loss.count),
               file.path().c_str(), static_cast<long long>(seq_len), seconds);
}

}  // namespace

void register_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "Loss and perplexity of a model on a prepared data folder's val.tokens");
  cmd->footer(
      "Prints two lines to stdout: 'loss L' (mean next-token cross-entropy in nats) and 'perplexity P'\n"
      "(exp(L)). The targets are the first --tokens of the file (all of it by default), cut into\n"
      "consecutive windows of --seq-len tokens, --batch windows per pass: the windows `train` measures\n"
      "its val loss on, so the numbers agree. Exit codes: 0 ok, 1 bad input, 2 usage.");
  add_model_flag(*cmd, a->model_dir);
  cmd->add_option("--data", a->data, "Data folder written by `mambacpp prepare` (its val.tokens), or a token file")
      ->type_name("DIR")
      ->required();
  cmd->add_option("--batch", a->batch, "Windows per forward pass, >= 1")->type_name("N")->capture_default_str();
  cmd->add_option("--seq-len", a->seq_len, "Tokens per window, >= 1")->type_name("N")->capture_default_str();
  cmd->add_option("--tokens", a->tokens, "Targets to measure (the first N of the file), 0 = all")
      ->type_name("N")
      ->capture_default_str();
  add_threads_flag(*cmd, a->threads);
  cmd->callback([a] { run_eval(*a); });
}

}  // namespace mambacpp::cli
