// mambacpp train: trains (or with --resume continues) a Mamba LM on a prepared data folder
// (src/train/trainer.h). SIGINT / SIGTERM end it cleanly with a checkpoint; a second one kills.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <type_traits>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "train/progress.h"
#include "train/trainer.h"

namespace mambacpp::cli {
namespace {

struct TrainArgs {
  TrainOptions options;
  std::string threads;
  std::map<std::string, CLI::Option*> flags;  // by flag name, to learn which the user typed
};

std::atomic<int> g_stop_signal{0};

// The first SIGINT/SIGTERM asks the trainer to save and stop; a second one, while it still runs,
// takes the default action (the process ends; the last complete checkpoint stays valid).
void on_stop_signal(int sig) {
  if (g_stop_signal.exchange(sig) != 0) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}

// Installs the handlers for the lifetime of one training run.
class StopSignals {
 public:
  StopSignals() {
    g_stop_signal = 0;
    previous_int_ = std::signal(SIGINT, on_stop_signal);
    previous_term_ = std::signal(SIGTERM, on_stop_signal);
  }
  ~StopSignals() {
    std::signal(SIGINT, previous_int_);
    std::signal(SIGTERM, previous_term_);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  void (*previous_int_)(int) = SIG_DFL;
  void (*previous_term_)(int) = SIG_DFL;
};

std::string summary_line(const TrainOptions& o, const TrainSummary& s) {
  const std::string val = s.val_loss ? cat(", val loss ", *s.val_loss) : std::string();
  const std::string skipped = s.skipped_steps ? cat(", ", s.skipped_steps, " step(s) skipped") : std::string();
  if (s.finished)
    return cat("finished ", o.out, ": ", s.step, " steps", val, skipped, "; checkpoint ", s.checkpoint.string(), "\n");
  return cat("stopped by ", s.stopped_by, " at step ", s.step, "/", o.steps, val, skipped, "; checkpoint ",
             s.checkpoint.string(), "; continue with: mambacpp train --out ", o.out, " --resume\n");
}

void run_train(TrainArgs& a) {
  a.options.threads = parse_int_flag("--threads", a.threads);
  for (const auto& [flag, option] : a.flags)
    if (option->count() > 0) a.options.given.insert(flag);
  TrainSummary summary;
  {  // the progress bar's line ends before the summary is printed
    ProgressDisplay progress(stderr);
    TrainEvents events;
    events.on_step = [&](const StepReport& r) { progress.step(r); };
    events.on_note = [&](const std::string& line) { progress.note(line); };
    StopSignals signals;
    summary = train(a.options, events, &g_stop_signal);
  }
  write_stdout(summary_line(a.options, summary));
}

}  // namespace

void register_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "Train a Mamba language model on a prepared data folder");
  cmd->footer(
      "RUN gets metrics.csv (step,tokens,train_loss,val_loss,lr,grad_norm,tok_per_s,elapsed_s: a row per\n"
      "optimizer step, row 0 holding the initial val loss; empty = not measured), loss.svg, and\n"
      "checkpoints/step-%08d/ (HF folders that `generate` and `eval` load, plus optimizer.safetensors and\n"
      "trainer_state.json) with checkpoints/latest naming the newest. Checkpoints appear whole or not\n"
      "at all, so a killed run always resumes from its latest one.\n"
      "--resume continues RUN exactly where its latest checkpoint left it (same windows, schedule and\n"
      "losses as an uninterrupted run with the same --threads); its settings come from the checkpoint,\n"
      "and a flag given again must agree (--data, --save-every, --keep, --stop-after, --threads may\n"
      "change). Without --resume, a RUN holding a checkpoint is refused: a run is never overwritten.\n"
      "A new model: --config FILE.json, or the shape flags (expand 2, conv 4, dt_rank ceil(d_model/16),\n"
      "tied embeddings, vocab_size from the data); --init-from CKPT starts from a checkpoint's weights.\n"
      "Schedule: linear warmup to --lr, cosine decay to --min-lr at --steps. AdamW (0.9, 0.95, eps\n"
      "1e-8) without decay on norms, biases, D and A_log. A step whose loss or gradient is not finite\n"
      "is skipped; 5 in a row stop the run (exit 1) with the last checkpoint intact.\n"
      "SIGINT/SIGTERM (Ctrl-C) save a checkpoint and exit 0; a second signal kills at once.\n"
      "Exit codes: 0 finished or stopped cleanly (--stop-after, a signal), 1 bad input, 2 usage.");
  TrainOptions& o = a->options;
  cmd->add_option("--out", o.out, "Run folder (metrics.csv, loss.svg, checkpoints/)")->type_name("RUN")->required();
  for_each_setting(o, [&](const SettingInfo& s, auto& value) {
    using T = std::remove_reference_t<decltype(value)>;
    const char* type = std::is_same_v<T, std::string> ? "PATH" : std::is_integral_v<T> ? "N" : "X";
    a->flags[s.flag] = cmd->add_option(s.flag, value, s.help)->type_name(type)->capture_default_str();
  });
  cmd->add_flag("--resume", o.resume, "Continue RUN from its latest checkpoint");
  add_threads_flag(*cmd, a->threads);
  cmd->callback([a] { run_train(*a); });
}

}  // namespace mambacpp::cli
