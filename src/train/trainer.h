// The trainer: `mambacpp train` as a function. A run folder (RUN) holds metrics.csv (a row per
// optimizer step), loss.svg and checkpoints/step-%08d/ (HF layout + optimizer and trainer state,
// train_checkpoint.h) with checkpoints/latest naming the newest. A run resumes bit for bit from
// its latest checkpoint: same data windows, schedule, moments and losses as if never stopped
// (given the same thread count).
//
// One optimizer step: zero the gradients; for each of `accum` micro-batches draw `batch` windows
// of seq_len + 1 tokens from train.tokens with the run's data generator and add the gradient of
// the mean loss over all accum x batch x seq_len targets; clip by global norm; if the loss or the
// norm is not finite, skip the update (counted; kMaxSkipsInARow in a row stop the run); else one
// AdamW step at the scheduled learning rate.
//
// Data-parallel (train()'s communicator, distributed.h, docs/DISTRIBUTED.md): --batch and --accum
// stay the global step; every rank draws all windows (so the generator's state does not depend on
// the rank count), trains on its share (window_share) with the global loss scale, and the
// gradients are summed over the ranks while the last micro-batch's backward runs. Rank 0 writes
// the run folder; all ranks hold the same parameters (broadcast from rank 0 at the start,
// checked every dist_check_every steps).
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace mambacpp {

class Communicator;

// How a setting lives on when a run is resumed (every one is saved in trainer_state.json):
//  Run:        fixed for the whole run; a flag given again with --resume must agree.
//  Carried:    kept from the saved run unless the flag is given again (folders, checkpoint cadence).
//  Invocation: applies to one invocation only.
enum class SettingScope { Run, Carried, Invocation };

struct SettingInfo {
  const char* flag;  // "--lr": also the setting's key in trainer_state.json
  const char* help;
  SettingScope scope;
};

struct TrainOptions {
  std::string data;         // folder written by `mambacpp prepare`
  std::string out;          // the run folder
  std::string config;       // HF config.json giving the model shape; "" = the shape flags
  std::string init_from;    // checkpoint whose weights start the run; "" = random initialisation
  int64_t d_model = 256, n_layer = 4, d_state = 16;
  int64_t batch = 8, seq_len = 256;
  double lr = 1e-3;
  std::optional<double> min_lr;  // default lr / 10
  int64_t warmup = 100, steps = 1000;
  double weight_decay = 0.1, grad_clip = 1.0;
  int64_t accum = 1;
  int64_t eval_every = 100, eval_tokens = 32768;
  int64_t save_every = 200, keep = 3;
  uint64_t seed = 0;
  bool resume = false;
  int64_t stop_after = 0;  // 0: run on to `steps`
  int64_t threads = 0;     // compute threads; 0: leave the current count
  // Batches made of EOS-ended documents (train/document_batches.h); at most one; none: random windows.
  bool pack = false, pad = false, stateful = false;

  // The flags the user typed (the CLI fills it; API callers may leave it empty). With --resume
  // each must agree with the run's saved value; --config or --init-from exclude the shape flags.
  std::set<std::string> given;
  // Test hook (no flag): the loss of these steps (1-based) is replaced by NaN.
  std::vector<int64_t> poison_loss_at_steps;

  // Data-parallel runs: compare the ranks' parameter digests every N steps (0: only at the start).
  int64_t dist_check_every = 100;
  // Test hook (no flag): at the start of step `step`, rank `rank` hangs, exits (code 3), or
  // changes a parameter (which the next check of the ranks' states finds).
  struct RankFault {
    enum Kind { Hang, Exit, Diverge };
    int rank = 0;
    int64_t step = 0;
    Kind kind = Exit;
  };
  std::optional<RankFault> rank_fault;
};

inline constexpr int kMaxSkipsInARow = 5;

// Every setting once, with its flag, help text and scope: the CLI's flags, the saved run settings,
// and the --resume agreement check all walk this list.
template <class Options, class Visit>
void for_each_setting(Options& o, Visit&& visit) {
  using enum SettingScope;
  visit(SettingInfo{"--data", "Data folder written by `mambacpp prepare` (train.tokens, val.tokens, tokenizer.json); "
                              "with --resume, default: the run's", Carried}, o.data);
  visit(SettingInfo{"--config", "HF config.json giving the model's shape (vocab_size at least the data's); "
                                "excludes the shape flags", Run}, o.config);
  visit(SettingInfo{"--init-from", "Checkpoint folder whose weights (and shape) start the run", Run}, o.init_from);
  visit(SettingInfo{"--d-model", "Model width (hidden_size), >= 1", Run}, o.d_model);
  visit(SettingInfo{"--n-layer", "Number of Mamba blocks, >= 1", Run}, o.n_layer);
  visit(SettingInfo{"--d-state", "SSM state size N, >= 1", Run}, o.d_state);
  visit(SettingInfo{"--batch", "Sequences per micro-batch, >= 1", Run}, o.batch);
  visit(SettingInfo{"--seq-len", "Tokens per sequence, >= 1 (windows of seq-len + 1 tokens)", Run}, o.seq_len);
  visit(SettingInfo{"--lr", "Peak learning rate, > 0", Run}, o.lr);
  visit(SettingInfo{"--min-lr", "Learning rate at the end of the cosine decay, in [0, lr] (default lr / 10)", Run},
        o.min_lr);
  visit(SettingInfo{"--warmup", "Steps of linear warmup from 0 to --lr, >= 0", Run}, o.warmup);
  visit(SettingInfo{"--steps", "Optimizer steps of the whole run (the schedule ends there), >= 1", Run}, o.steps);
  visit(SettingInfo{"--weight-decay", "AdamW weight decay on matrices and the embedding, >= 0", Run}, o.weight_decay);
  visit(SettingInfo{"--grad-clip", "Clip gradients to this global L2 norm, >= 0; 0 = off", Run}, o.grad_clip);
  visit(SettingInfo{"--accum", "Micro-batches accumulated per optimizer step, >= 1", Run}, o.accum);
  visit(SettingInfo{"--eval-every", "Measure the validation loss every N steps (and at steps 0 and the last), "
                                    ">= 0; 0 = never", Run}, o.eval_every);
  visit(SettingInfo{"--eval-tokens", "Validation targets per measurement (the first N of val.tokens), >= 1", Run},
        o.eval_tokens);
  visit(SettingInfo{"--save-every", "Checkpoint every N steps, >= 0 (also always at the end and when stopped); "
                                    "0 = only then", Carried}, o.save_every);
  visit(SettingInfo{"--keep", "Checkpoints to keep (older ones are deleted), >= 1", Carried}, o.keep);
  visit(SettingInfo{"--seed", "Seed of the initial weights and of the training windows", Run}, o.seed);
  visit(SettingInfo{"--pack", "Rows of documents back to back (one crossing a row's end goes on in the next row), "
                              "the conv and scan restarting at each; no target crosses a document end, no padding",
                    Run}, o.pack);
  visit(SettingInfo{"--pad", "One document per row, padded to the batch's longest (the baseline --pack is "
                             "measured against)", Run}, o.pad);
  visit(SettingInfo{"--stateful", "Each row walks the data in consecutive --seq-len windows, starting from the "
                                  "previous step's final states (truncated BPTT); documents restart at zero", Run},
        o.stateful);
  visit(SettingInfo{"--stop-after", "End this invocation after N steps with a checkpoint (continue with --resume); "
                                    "0 = run to --steps", Invocation}, o.stop_after);
}

// Fails with a usage error naming the flag and value for every value out of range or flags that
// exclude each other; fills defaults that depend on other values (--min-lr).
void validate_options(TrainOptions& options);

// One optimizer step as reported to the progress display (and written to metrics.csv).
struct StepReport {
  int64_t step = 0, steps = 0, tokens = 0;  // tokens: training tokens seen so far
  double train_loss = 0, lr = 0, grad_norm = 0;
  std::optional<double> val_loss;
  bool skipped = false;
  double tok_per_s = 0;   // this invocation's training throughput
  double eta_s = 0;       // at that throughput, to `steps`
};

struct TrainEvents {
  std::function<void(const StepReport&)> on_step;
  std::function<void(const std::string&)> on_note;  // one line: start, evaluations, checkpoints, stop
};

struct TrainSummary {
  int64_t step = 0;       // steps done in the run so far
  bool finished = false;  // reached --steps
  std::string stopped_by; // "" (finished), "--stop-after", "SIGINT", "SIGTERM"
  std::filesystem::path checkpoint;  // the last one written
  std::optional<double> val_loss;    // the last measured
  int64_t skipped_steps = 0;
};

// Runs (or with options.resume continues) the run in options.out. `stop_signal`, if set, is
// polled after every step: nonzero (a signal number) saves a checkpoint and returns (with several
// ranks: any rank's signal, seen by all after the same step). `communicator`: the ranks of a
// data-parallel run (null: this process alone); every rank calls train() with the same options.
// Bad data, flags or folders: Error naming them (Usage for flag values, else BadInput);
// kMaxSkipsInARow non-finite steps in a row: BadInput, the last checkpoint untouched.
TrainSummary train(TrainOptions options, const TrainEvents& events = {},
                   const std::atomic<int>* stop_signal = nullptr, Communicator* communicator = nullptr);

}  // namespace mambacpp
