// mambacpp train: trains (or with --resume continues) a Mamba LM on a prepared data folder
// (src/train/trainer.h). SIGINT / SIGTERM end it cleanly with a checkpoint; a second one kills.
#include <atomic>
#include <cinttypes>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <type_traits>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "train/distributed.h"
#include "train/progress.h"
#include "train/trainer.h"

namespace mambacpp::cli {
namespace {

struct TrainArgs {
  TrainOptions options;
  std::string threads;
  bool distributed = false;
  double dist_timeout = 300;
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

// Test hook: MAMBACPP_TEST_RANK_FAULT="RANK:STEP:KIND" makes that rank of a --distributed run
// hang, exit or change a parameter (KIND hang, exit, diverge) at the start of that step
// (tests/train_distributed_test.cpp).
std::optional<TrainOptions::RankFault> rank_fault_from_environment() {
  const char* text = std::getenv("MAMBACPP_TEST_RANK_FAULT");
  if (!text) return std::nullopt;
  TrainOptions::RankFault f;
  char kind[8] = {};
  const std::map<std::string, TrainOptions::RankFault::Kind> kinds = {
      {"hang", TrainOptions::RankFault::Hang}, {"exit", TrainOptions::RankFault::Exit},
      {"diverge", TrainOptions::RankFault::Diverge}};
  if (std::sscanf(text, "%d:%" SCNd64 ":%7s", &f.rank, &f.step, kind) != 3 || !kinds.count(kind))
    fail_usage("MAMBACPP_TEST_RANK_FAULT ", text, ": expected RANK:STEP:KIND, KIND hang, exit or diverge");
  f.kind = kinds.at(kind);
  return f;
}

TrainSummary run_with_progress(const TrainOptions& options, Communicator* comm) {
  // the progress bar's line ends before the summary is printed
  ProgressDisplay progress(stderr);
  TrainEvents events;
  events.on_step = [&](const StepReport& r) { progress.step(r); };
  events.on_note = [&](const std::string& line) { progress.note(line); };
  StopSignals signals;
  return train(options, events, &g_stop_signal, comm);
}

// One rank of a --distributed run. An error on one rank ends the whole job (the others would wait
// for it until the timeout): that rank prints it and aborts with the error's exit code.
void run_distributed(TrainArgs& a) {
  if (!(a.dist_timeout > 0)) fail_usage("--dist-timeout ", a.dist_timeout, " must be > 0 seconds");
  a.options.rank_fault = rank_fault_from_environment();
  const std::unique_ptr<Communicator> comm = make_distributed_communicator(a.dist_timeout);
  TrainSummary summary;
  try {
    summary = run_with_progress(a.options, comm.get());
  } catch (const std::exception& e) {
    if (comm->size() == 1) throw;
    const auto* error = dynamic_cast<const Error*>(&e);
    std::fprintf(stderr, "error: rank %d: %s\n", comm->rank(), e.what());
    comm->abort(error && error->kind() == ErrorKind::Usage ? 2 : 1);
  }
  if (comm->rank() == 0) write_stdout(summary_line(a.options, summary));
}

void run_train(TrainArgs& a) {
  a.options.threads = parse_int_flag("--threads", a.threads);
  for (const auto& [flag, option] : a.flags)
    if (option->count() > 0) a.options.given.insert(flag);
  if (a.distributed) run_distributed(a);
  else write_stdout(summary_line(a.options, run_with_progress(a.options, nullptr)));
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
      "--distributed: data-parallel under `mpirun -np N` (docs/DISTRIBUTED.md); --batch x --accum\n"
      "windows per step are shared by the ranks (same losses as one process); rank 0 writes RUN;\n"
      "a run resumes with any number of ranks. Without mpirun it runs as one process.\n"
      "Rows (docs/TRAINING.md): random windows of --seq-len + 1 tokens by default; --pack fills rows with\n"
      "the documents (ended by the model's eos_token_id) back to back, the conv and scan restarting at\n"
      "each and no target crossing one; --pad puts one document per row, padded to the batch's longest;\n"
      "--stateful walks each row through the data in consecutive windows, carrying the final states\n"
      "into the next step (truncated BPTT; kept in checkpoints as states.safetensors). At most one of\n"
      "the three. The tokens and tok_per_s columns count real targets (no padding, no document ends).\n"
      "Exit codes: 0 finished or stopped cleanly (--stop-after, a signal), 1 bad input, 2 usage.");
  TrainOptions& o = a->options;
  cmd->add_option("--out", o.out, "Run folder (metrics.csv, loss.svg, checkpoints/)")->type_name("RUN")->required();
  for_each_setting(o, [&](const SettingInfo& s, auto& value) {
    using T = std::remove_reference_t<decltype(value)>;
    if constexpr (std::is_same_v<T, bool>) {
      a->flags[s.flag] = cmd->add_flag(s.flag, value, s.help);
    } else {
      const char* type = std::is_same_v<T, std::string> ? "PATH" : std::is_integral_v<T> ? "N" : "X";
      a->flags[s.flag] = cmd->add_option(s.flag, value, s.help)->type_name(type)->capture_default_str();
    }
  });
  cmd->add_flag("--resume", o.resume, "Continue RUN from its latest checkpoint");
  cmd->add_flag("--distributed", a->distributed, "Data-parallel across the processes of `mpirun -np N`");
  cmd->add_option("--dist-timeout", a->dist_timeout,
                  "With --distributed: seconds a rank waits for the others before aborting the job")
      ->type_name("SECONDS")->capture_default_str();
  cmd->add_option("--dist-check-every", o.dist_check_every,
                  "With --distributed: check every N steps that all ranks hold the same parameters; 0 = only "
                  "at the start")
      ->type_name("N")->capture_default_str();
  add_threads_flag(*cmd, a->threads);
  cmd->callback([a] { run_train(*a); });
}

}  // namespace mambacpp::cli
