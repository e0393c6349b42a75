#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <limits>
#include <thread>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "io/atomic_file.h"
#include "io/json_fields.h"
#include "text/tokenizer.h"
#include "train/distributed.h"
#include "train/document_batches.h"
#include "train/evaluation.h"
#include "train/loss_chart.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/token_data.h"
#include "train/train_checkpoint.h"

namespace mambacpp {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kMetricsFile = "metrics.csv";
constexpr const char* kChartFile = "loss.svg";
constexpr const char* kCheckpointsDir = "checkpoints";
constexpr const char* kDistributedFile = "distributed.json";  // communication figures of the last invocation
constexpr uint64_t kDataStream = 0x6461746177696e64ull;  // the window generator's seed = seed ^ this

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

bool was_given(const TrainOptions& o, const char* flag) { return o.given.count(flag) > 0; }

// A value that parses but is out of range is bad input (exit 1), as for every command.
template <class T>
void require(bool ok, const char* flag, const T& value, const char* rule) {
  if (!ok) fail(flag, " ", value, " is out of range: ", rule);
}

// The settings' values as text, JSON, and back.
std::string as_text(const std::string& v) { return v.empty() ? "(none)" : v; }
std::string as_text(bool v) { return v ? "on" : "off"; }
std::string as_text(const std::optional<double>& v) { return v ? cat(*v) : "(default)"; }
template <class T>
std::string as_text(const T& v) { return cat(v); }

json as_json(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }
template <class T>
json as_json(const T& v) { return json(v); }

void from_json(const json& j, std::optional<double>& v) {
  if (j.is_null()) v.reset();
  else v = j.get<double>();
}
template <class T>
void from_json(const json& j, T& v) { v = j.get<T>(); }

json settings_json(const TrainOptions& o) {
  json j = json::object();
  for_each_setting(o, [&](const SettingInfo& s, const auto& value) {
    if (s.scope != SettingScope::Invocation) j[s.flag] = as_json(value);
  });
  return j;
}

// With --resume: the run's settings replace the defaults; a Run setting given again must agree.
void adopt_saved_settings(TrainOptions& o, const json& saved, const std::string& source) {
  for_each_setting(o, [&](const SettingInfo& s, auto& value) {
    const auto it = saved.find(s.flag);
    if (s.scope == SettingScope::Invocation || it == saved.end()) return;
    std::remove_reference_t<decltype(value)> saved_value{};
    try {
      from_json(*it, saved_value);
    } catch (const json::exception&) {
      fail(source, ": settings.", s.flag, ": ", json_excerpt(*it), " is not a valid value");
    }
    if (!was_given(o, s.flag)) {
      value = saved_value;
    } else if (s.scope == SettingScope::Run && value != saved_value) {
      fail_usage(s.flag, " ", as_text(value), " differs from the run's ", as_text(saved_value), " (", source,
                 "): a resumed run keeps its settings; drop the flag, or start a new run in another folder");
    }
  });
}

std::string absolute_or_empty(const std::string& path) { return path.empty() ? path : fs::absolute(path).string(); }

// ---- Data and model ----------------------------------------------------------------------------

struct TrainingData {
  TokenFile train;
  std::optional<TokenFile> val;  // absent when the folder has none (prepare --val-fraction 0)
  std::optional<fs::path> tokenizer;
};

TrainingData open_data(const TrainOptions& o) {
  const fs::path dir = o.data;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail("--data ", o.data, ": no such folder (expected one written by `mambacpp prepare`)");
  if (!fs::exists(dir / "train.tokens", ec))
    fail("--data ", o.data, ": holds no train.tokens (expected a folder written by `mambacpp prepare`)");
  TrainingData data{TokenFile::open(dir / "train.tokens"), std::nullopt, std::nullopt};
  if (data.train.size() < o.seq_len + 1)
    fail("--seq-len ", o.seq_len, " needs windows of ", o.seq_len + 1, " tokens but ", data.train.path().string(),
         " holds only ", data.train.size(), ": use a shorter --seq-len or more data");
  if (fs::exists(dir / "val.tokens", ec)) {
    TokenFile val = TokenFile::open(dir / "val.tokens");
    if (val.vocab_size() != data.train.vocab_size())
      fail(val.path().string(), ": vocabulary of ", val.vocab_size(), " tokens, but train.tokens has ",
           data.train.vocab_size(), ": the files are from different tokenizers");
    if (val.size() >= 2) data.val = std::move(val);
  }
  if (fs::exists(dir / "tokenizer.json", ec)) data.tokenizer = dir / "tokenizer.json";
  return data;
}

// The shape flags' model: HF MambaConfig defaults, expand 2, conv 4, dt_rank ceil(d_model / 16),
// tied embeddings, end-of-text and padding ids from the data's tokenizer.
MambaConfig shape_config(const TrainOptions& o, const TrainingData& data) {
  MambaConfig c;
  c.vocab_size = data.train.vocab_size();
  c.d_model = o.d_model;
  c.n_layer = o.n_layer;
  c.d_state = o.d_state;
  c.d_inner = 2 * o.d_model;
  c.dt_rank = (o.d_model + 15) / 16;
  if (data.tokenizer) {
    const Tokenizer tokenizer = Tokenizer::from_file(*data.tokenizer);
    if (const auto eos = tokenizer.token_to_id("<|endoftext|>")) c.eos_token_id = *eos;
    if (const auto pad = tokenizer.token_to_id("<|padding|>")) c.pad_token_id = *pad;
  }
  return c;
}

void check_vocabulary(const MambaModel& model, const TrainingData& data, const std::string& source) {
  if (model.config().vocab_size < data.train.vocab_size())
    fail(source, ": the model's vocabulary has ", model.config().vocab_size, " tokens, fewer than the data's ",
         data.train.vocab_size(), " (", data.train.path().string(), ")");
}

MambaModel initial_model(const TrainOptions& o, const TrainingData& data) {
  LoadOptions f32;
  f32.weights = WeightType::F32;
  if (!o.init_from.empty()) {
    MambaModel model = MambaModel::load(o.init_from, f32);
    check_vocabulary(model, data, "--init-from " + o.init_from);
    return model;
  }
  const MambaConfig config = o.config.empty() ? shape_config(o, data) : read_config(o.config);
  MambaModel model = MambaModel::random(config, o.seed, WeightType::F32);
  check_vocabulary(model, data, o.config.empty() ? std::string("the model") : "--config " + o.config);
  return model;
}

// ---- The run folder ----------------------------------------------------------------------------

bool is_temporary(const std::string& name) {
  return name.size() > 1 && name[0] == '.' && (name.find(".tmp-") != std::string::npos || name.find(".old-") != std::string::npos);
}

// A fresh run may take a new or empty folder, or one where an earlier run left only metrics
// before its first checkpoint; never one holding a run's checkpoint or anything else.
void check_fresh_run_folder(const fs::path& run) {
  std::error_code ec;
  if (!fs::exists(run, ec)) return;
  if (!fs::is_directory(run, ec)) fail("--out ", run.string(), ": exists and is not a folder");
  if (fs::exists(run / kCheckpointsDir / "latest", ec))
    fail("--out ", run.string(), " holds a run (", kCheckpointsDir, "/latest names its checkpoint): continue it with "
         "--resume, or choose another folder; a run is never overwritten");
  for (const auto& e : fs::directory_iterator(run, ec)) {
    const std::string name = e.path().filename().string();
    const bool ours = name == kMetricsFile || name == kChartFile || name == kDistributedFile ||
                      (name == kCheckpointsDir && e.is_directory());
    if (!ours && !is_temporary(name))
      fail("--out ", run.string(), ": the folder holds ", name, ", which is not part of a run; choose a new or "
           "empty folder");
  }
}

void create_run_folder(const fs::path& run, const fs::path& checkpoints) {
  std::error_code ec;
  fs::create_directories(checkpoints, ec);
  if (ec) fail("--out ", run.string(), ": cannot create the run folder (", checkpoints.string(), "): ", ec.message());
}

std::string signal_name(int sig) {
  if (sig == SIGINT) return "SIGINT";
  if (sig == SIGTERM) return "SIGTERM";
  return cat("signal ", sig);
}

// ---- The trainer ---------------------------------------------------------------------------------

class Trainer {
 public:
  // distributed: a data-parallel run (even of one rank): report the communication figures.
  Trainer(TrainOptions options, const TrainEvents& events, const std::atomic<int>* stop_signal, Communicator& comm,
          bool distributed)
      : o_(std::move(options)), events_(events), stop_signal_(stop_signal), comm_(comm), distributed_(distributed),
        run_(fs::absolute(o_.out)), checkpoints_(run_ / kCheckpointsDir) {}

  TrainSummary run() {
    if (o_.resume) open_resumed_run();
    else open_fresh_run();
    grads_ = Parameters(model_->config(), WeightType::F32);
    reducer_.emplace(comm_, grads_);
    last_micro_batch_.on_gradients_ready = [this](int layer) { reducer_->on_ready(layer); };
    if (o_.pack || o_.pad || o_.stateful) open_document_batches();
    window_.resize(size_t(o_.seq_len + 1));
    tokens_.resize(size_t(o_.batch * o_.seq_len));
    targets_.resize(tokens_.size());
    if (comm_.size() > 1) {
      synchronize_ranks();
      measure_allreduce();
    }
    start_ = Clock::now();
    if (state_.step == 0 && !o_.resume) measure_initial_val();

    TrainSummary summary;
    while (state_.step < o_.steps) {
      if (const int sig = stop_signal()) {
        summary.stopped_by = signal_name(sig);
        break;
      }
      if (o_.stop_after > 0 && steps_here_ == o_.stop_after) {
        summary.stopped_by = "--stop-after";
        break;
      }
      take_step();
      if (o_.save_every > 0 && state_.step % o_.save_every == 0) save();
    }
    if (saved_step_ != state_.step) save();
    write_chart();
    if (distributed_) report_communication();
    summary.step = state_.step;
    summary.finished = state_.step >= o_.steps;
    if (summary.finished) summary.stopped_by.clear();
    summary.checkpoint = last_checkpoint_;
    summary.skipped_steps = state_.skipped_total;
    if (metrics_)
      for (const MetricsRow& r : metrics_->rows())
        if (r.val_loss) summary.val_loss = r.val_loss;
    return summary;
  }

 private:
  int64_t tokens_per_step() const { return o_.accum * o_.batch * o_.seq_len; }
  int64_t windows_per_step() const { return o_.accum * o_.batch; }
  // Rank 0 writes the run folder and reports; the other ranks stay quiet.
  bool writes_run() const { return comm_.rank() == 0; }

  void note(const std::string& line) const {
    if (events_.on_note && writes_run()) events_.on_note(line);
  }

  void check_window_share() const {
    if (windows_per_step() < comm_.size())
      fail("--batch x --accum = ", windows_per_step(), " windows per step cannot be shared by ", comm_.size(),
           " ranks (each needs one at least): raise --batch or --accum, or run fewer ranks");
  }

  void open_fresh_run() {
    check_window_share();
    if (writes_run()) check_fresh_run_folder(run_);
    data_ = open_data(o_);
    model_ = initial_model(o_, *data_);
    note_missing_val();
    optimizer_.emplace(model_->config(), adamw_options());
    data_rng_ = Rng(o_.seed ^ kDataStream);
    if (writes_run()) {
      create_run_folder(run_, checkpoints_);
      remove_stale_temporaries(run_);
      remove_stale_temporaries(checkpoints_);
      remove_checkpoints(checkpoints_);
      metrics_.emplace(MetricsLog::create(run_ / kMetricsFile));
    }
    const MambaConfig& c = model_->config();
    note(cat("training ", run_.string(), ": ", model_->parameter_count(), " parameters (d_model ", c.d_model,
             ", n_layer ", c.n_layer, ", d_state ", c.d_state, ", vocab ", c.vocab_size, "); ", data_->train.size(),
             " train tokens, ", data_->val ? data_->val->size() : 0, " val; ", o_.steps, " steps of ",
             tokens_per_step(), " tokens; ", num_threads(), num_threads() == 1 ? " thread" : " threads",
             ranks_text()));
  }

  std::string ranks_text() const {
    if (!distributed_) return "";
    return cat(" per rank, ", comm_.size(), comm_.size() == 1 ? " rank" : " ranks", " (", comm_.name(), ")");
  }

  void open_resumed_run() {
    const std::optional<fs::path> latest = find_latest_checkpoint(checkpoints_);
    if (!latest)
      fail("--resume: ", run_.string(), " holds no checkpoint to continue (no ", (checkpoints_ / "latest").string(),
           "); start the run without --resume");
    state_ = read_trainer_state(*latest);
    adopt_saved_settings(o_, state_.settings, (*latest / "trainer_state.json").string());
    check_window_share();
    if (writes_run()) {
      remove_stale_temporaries(run_);
      remove_stale_temporaries(checkpoints_);
    }
    data_ = open_data(o_);
    note_missing_val();
    LoadOptions f32;
    f32.weights = WeightType::F32;
    model_ = MambaModel::load(*latest, f32);
    check_vocabulary(*model_, *data_, latest->string());
    optimizer_.emplace(model_->config(), adamw_options());
    read_optimizer_state(*latest, state_.adamw_steps, *optimizer_);
    data_rng_.set_state(state_.data_rng);
    if (writes_run()) metrics_.emplace(MetricsLog::resume(run_ / kMetricsFile, state_.step));
    saved_step_ = state_.step;
    last_checkpoint_ = *latest;
    note(cat("resuming ", run_.string(), " from ", latest->filename().string(), " (step ", state_.step, " of ",
             o_.steps, ")", ranks_text()));
    if (state_.threads != num_threads())
      note(cat("note: the checkpoint was written with ", state_.threads, " threads, this run uses ", num_threads(),
               "; results match an uninterrupted run bit for bit only with the same --threads"));
  }

  void note_missing_val() const {
    if (!data_->val && o_.eval_every > 0)
      note(cat("note: ", o_.data, " has no val.tokens with 2 or more tokens: no validation loss is measured"));
  }

  AdamWOptions adamw_options() const {
    AdamWOptions a;
    a.weight_decay = o_.weight_decay;
    return a;
  }

  // Puts the window just drawn into row `row` of tokens_ (its first L ids) and targets_ (its last L).
  void place_window(int64_t row) {
    const auto at = ptrdiff_t(row * o_.seq_len);
    std::copy(window_.begin(), window_.end() - 1, tokens_.begin() + at);
    std::copy(window_.begin() + 1, window_.end(), targets_.begin() + at);
  }

  // Draws the step's accum x batch windows in order (every rank draws all of them, so the data
  // generator moves on the same whatever the rank count) and adds the gradient of this rank's
  // share in micro-batches of up to `batch` windows, each scaled by the global target count: the
  // ranks' gradients sum to the one-process gradient. The last micro-batch's backward starts the
  // gradient all-reduce bucket by bucket. Returns this rank's share of the loss.
  MambaModel::Loss accumulate_gradients() {
    if (documents_) return accumulate_document_gradients();
    const WindowShare share = window_share(windows_per_step(), comm_.rank(), comm_.size());
    const float grad_scale = 1.0f / float(tokens_per_step());
    MambaModel::Loss loss;
    int64_t rows = 0;
    for (int64_t w = 0; w < windows_per_step(); ++w) {
      data_->train.sample_window(data_rng_, window_);
      if (!share.contains(w)) continue;
      place_window(rows++);
      const bool last = w + 1 == share.end;
      if (rows < o_.batch && !last) continue;
      const MambaModel::Loss part = model_->loss(tokens_.data(), targets_.data(), int(rows), o_.seq_len, &grads_,
                                                 grad_scale, last ? last_micro_batch_ : LossOptions{});
      loss.sum += part.sum;
      loss.count += part.count;
      rows = 0;
    }
    return loss;
  }

  // --pack, --pad, --stateful (document_batches.h). Documents end with the model's eos_token_id
  // (the data tokenizer's <|endoftext|> for a new model of the shape flags).
  void open_document_batches() {
    const MambaConfig& c = model_->config();
    const char* flag = o_.pack ? "--pack" : o_.pad ? "--pad" : "--stateful";
    if (!c.eos_token_id || *c.eos_token_id < 0 || *c.eos_token_id >= c.vocab_size)
      fail(flag, " cuts the training data into documents at the end-of-text id, but the model has no usable "
           "eos_token_id (give the data a tokenizer.json with <|endoftext|>, or a --config with eos_token_id)");
    if (o_.stateful && comm_.size() > 1)
      fail_usage("--stateful carries each row's states across steps on one process: it does not combine with "
                 "several ranks");
    const BatchLayout layout = o_.pack ? BatchLayout::Packed : o_.pad ? BatchLayout::Padded : BatchLayout::Stateful;
    documents_.emplace(layout, data_->train, int32_t(*c.eos_token_id), c, o_.batch, o_.seq_len, o_.accum);
    if (o_.resume) documents_->read_state(last_checkpoint_);
  }

  // The step's accum micro-batches of documents. Every rank makes all of them (the generator moves
  // on the same whatever the rank count) and trains on the rows of its share. Each micro-batch's
  // gradient is its mean over its real (non-padding) targets divided by accum.
  MambaModel::Loss accumulate_document_gradients() {
    const WindowShare share = window_share(windows_per_step(), comm_.rank(), comm_.size());
    MambaModel::Loss loss;
    for (int64_t m = 0; m < o_.accum; ++m) {
      LossOptions options;
      const RowBatch& batch = documents_->next(m, data_rng_, options);
      const int64_t first = std::max(share.first - m * o_.batch, int64_t(0));
      const int64_t end = std::min(share.end - m * o_.batch, o_.batch);
      if (first < end) {
        if (share.end <= (m + 1) * o_.batch) options.on_gradients_ready = last_micro_batch_.on_gradients_ready;
        if (options.positions) options.positions += first * batch.length;
        const int64_t at = first * batch.length;
        const float grad_scale = 1.0f / float(o_.accum * std::max<int64_t>(1, batch.real_targets()));
        const MambaModel::Loss part = model_->loss(batch.tokens.data() + at, batch.targets.data() + at,
                                                   int(end - first), batch.length, &grads_, grad_scale, options);
        loss.sum += part.sum;
        loss.count += part.count;
      }
      documents_->after_loss(m);
    }
    return loss;
  }

  // Sums the gradients (waiting for the buckets the backward started) and the loss over the ranks,
  // with the stop signals, so that every rank takes the same decisions after the step.
  MambaModel::Loss reduce_over_ranks(const MambaModel::Loss& local, int64_t step) {
    const Clock::time_point t0 = Clock::now();
    reducer_->finish(cat("the gradient all-reduce of step ", step));
    const int sig = stop_signal_ ? stop_signal_->load() : 0;
    double sums[3] = {local.sum, double(local.count), double(sig != 0)};
    comm_.allreduce_sum(sums, cat("the loss all-reduce of step ", step));
    if (sums[2] > 0) agreed_stop_signal_ = sig != 0 ? sig : SIGTERM;
    comm_seconds_ += seconds_since(t0);
    return {sums[0], int64_t(sums[1])};
  }

  // The signal that stops the run: this process's own at once; with several ranks, one that any
  // rank had when the last step's sums were made, so that all ranks stop after the same step.
  int stop_signal() const {
    if (comm_.size() > 1) return agreed_stop_signal_;
    return stop_signal_ ? stop_signal_->load() : 0;
  }

  // Every rank must hold rank 0's position in the run, parameters and moments (a rank that read
  // another checkpoint or drifted is an error, never a silent divergence): rank 0's values are
  // broadcast and each rank compares its own.
  void check_ranks_agree(const std::string& when) const {
    std::vector<std::pair<const char*, uint64_t>> mine = {
        {"step", uint64_t(state_.step)},
        {"token count", uint64_t(state_.tokens)},
        {"AdamW update count", uint64_t(state_.adamw_steps)},
        {"skipped step count", uint64_t(state_.skipped_total)},
        {"parameters", parameters_digest(model_->parameters())},
        {"first AdamW moment", parameters_digest(optimizer_->first_moment())},
        {"second AdamW moment", parameters_digest(optimizer_->second_moment())},
    };
    for (uint64_t word : data_rng_.state()) mine.emplace_back("data generator state", word);
    std::vector<uint64_t> root(mine.size());
    for (size_t i = 0; i < mine.size(); ++i) root[i] = mine[i].second;
    comm_.broadcast(std::as_writable_bytes(std::span(root)), 0, "the check that every rank holds rank 0's state " + when);
    for (size_t i = 0; i < mine.size(); ++i)
      if (root[i] != mine[i].second)
        fail("the ranks' states differ ", when, ": this rank's ", mine[i].first, " (", mine[i].second,
             ") is not rank 0's (", root[i], "); every rank must read the same run folder, data and flags "
             "(a shared file system, or identical copies on every host)");
  }

  void synchronize_ranks() { check_ranks_agree(o_.resume ? "after resuming" : "at the start"); }

  // One all-reduce of the whole gradient buffer, as a step makes it, timed (after one to warm up).
  void measure_allreduce() {
    constexpr int kRepeats = 3;
    grads_.zero();
    for (int i = 0; i <= kRepeats; ++i) {
      const Clock::time_point t0 = Clock::now();
      reducer_->finish("the all-reduce bandwidth measurement");
      if (i > 0) allreduce_seconds_ += seconds_since(t0) / kRepeats;
    }
  }

  // At the end of a data-parallel invocation: the share of step time spent waiting for the other
  // ranks and the all-reduce bandwidth, as a note and in RUN/distributed.json.
  void report_communication() const {
    const double bytes = double(reducer_->elements()) * sizeof(float);
    const int ranks = comm_.size();
    const double share = step_seconds_ > 0 ? comm_seconds_ / step_seconds_ : 0;
    // Bus bandwidth (NCCL's convention): what each rank's link carries in a ring all-reduce.
    const double algbw = allreduce_seconds_ > 0 ? bytes / allreduce_seconds_ / 1e9 : 0;
    const double busbw = algbw * 2 * (ranks - 1) / ranks;
    std::string line = cat("communication: ", ranks, ranks == 1 ? " rank" : " ranks", " (", comm_.name(), ") x ",
                           num_threads(), num_threads() == 1 ? " thread" : " threads", "; ", steps_here_,
                           " steps in ", step_seconds_, " s, ", comm_seconds_, " s (", 100 * share,
                           "%) of it waiting for the other ranks' gradients and losses");
    if (ranks > 1)
      line += cat("; all-reduce of the ", bytes / (1 << 20), " MiB gradient: ", 1e3 * allreduce_seconds_, " ms (",
                  algbw, " GB/s, bus ", busbw, " GB/s)");
    note(line);
    if (!writes_run()) return;
    const json figures = {{"ranks", ranks}, {"communicator", comm_.name()}, {"threads_per_rank", num_threads()},
                          {"steps", steps_here_}, {"step_seconds", step_seconds_}, {"comm_wait_seconds", comm_seconds_},
                          {"comm_share", share}, {"gradient_bytes", bytes}, {"allreduce_seconds", allreduce_seconds_},
                          {"allreduce_algbw_GBps", algbw}, {"allreduce_busbw_GBps", busbw}};
    write_file_atomically(run_ / kDistributedFile, figures.dump(2) + "\n");
  }

  void inject_rank_fault(int64_t step) {
    const auto& f = o_.rank_fault;
    if (!f || f->rank != comm_.rank() || f->step != step) return;
    if (f->kind == TrainOptions::RankFault::Exit) std::_Exit(3);
    if (f->kind == TrainOptions::RankFault::Hang)
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    model_->parameters().region(ParamKind::Vector)[0] += 1;  // the first layer norm's first weight
    model_->parameters_changed();
  }

  std::optional<double> validate() {
    if (!data_->val || o_.eval_every == 0) return std::nullopt;
    const MambaModel::Loss loss = evaluate_loss(*model_, *data_->val, int(o_.batch), o_.seq_len, o_.eval_tokens);
    note(cat("step ", state_.step, ": val loss ", loss.mean(), " (", loss.count, " tokens)"));
    return loss.mean();
  }

  void measure_initial_val() {
    if (const std::optional<double> val = validate()) {
      MetricsRow row;
      row.val_loss = val;
      row.elapsed_s = seconds_since(start_);
      if (metrics_) metrics_->append(row);
    }
  }

  bool poisoned(int64_t step) const {
    const auto& p = o_.poison_loss_at_steps;
    return std::find(p.begin(), p.end(), step) != p.end();
  }

  void take_step() {
    const Clock::time_point t0 = Clock::now();
    const int64_t step = state_.step + 1;
    inject_rank_fault(step);
    grads_.zero();
    MambaModel::Loss loss = reduce_over_ranks(accumulate_gradients(), step);
    if (poisoned(step)) loss.sum = std::numeric_limits<double>::quiet_NaN();
    const double grad_norm = clip_grad_norm(grads_, o_.grad_clip);
    const double lr = learning_rate(state_.step, o_.warmup, o_.steps, o_.lr, *o_.min_lr);
    const bool skip = !std::isfinite(loss.mean()) || !std::isfinite(grad_norm);
    if (!skip) {
      optimizer_->step(model_->parameters(), grads_, lr);
      model_->parameters_changed();
    }
    const double seconds = seconds_since(t0);
    step_seconds_ += seconds;
    ++steps_here_;
    state_.step = step;
    state_.tokens += loss.count;
    tokens_here_ += loss.count;
    state_.adamw_steps = optimizer_->steps_taken();
    state_.data_rng = data_rng_.state();
    state_.skipped_total += skip;
    state_.skipped_in_a_row = skip ? state_.skipped_in_a_row + 1 : 0;
    if (comm_.size() > 1 && o_.dist_check_every > 0 && step % o_.dist_check_every == 0)
      check_ranks_agree(cat("after step ", step));

    MetricsRow row{step, state_.tokens, loss.mean(), std::nullopt, lr, grad_norm, double(loss.count) / seconds, 0};
    if (o_.eval_every > 0 && (step % o_.eval_every == 0 || step == o_.steps)) row.val_loss = validate();
    row.elapsed_s = state_.elapsed_s + seconds_since(start_);
    if (metrics_) metrics_->append(row);
    report(row, skip);
    if (skip) note(cat("step ", step, ": the loss or the gradient is not finite (loss ", loss.mean(), ", gradient norm ",
                       grad_norm, "); the step is skipped"));
    if (state_.skipped_in_a_row >= kMaxSkipsInARow) stop_after_skips();
  }

  void report(const MetricsRow& row, bool skipped) const {
    if (!events_.on_step || !writes_run()) return;
    StepReport r;
    r.step = row.step;
    r.steps = o_.steps;
    r.tokens = row.tokens;
    r.train_loss = *row.train_loss;
    r.val_loss = row.val_loss;
    r.lr = *row.lr;
    r.grad_norm = *row.grad_norm;
    r.skipped = skipped;
    r.tok_per_s = double(tokens_here_) / step_seconds_;
    r.eta_s = double(o_.steps - row.step) * step_seconds_ / double(steps_here_);
    events_.on_step(r);
  }

  [[noreturn]] void stop_after_skips() {
    write_chart();
    fail("steps ", state_.step - kMaxSkipsInARow + 1, " to ", state_.step, " all had a non-finite loss or gradient (",
         kMaxSkipsInARow, " in a row): training stopped. ",
         last_checkpoint_.empty() ? std::string("No checkpoint was written yet")
                                  : "The last checkpoint, " + last_checkpoint_.string() + ", is intact",
         "; try a lower --lr, a --grad-clip, or check the data");
  }

  void save() {
    state_.elapsed_s += seconds_since(start_);
    start_ = Clock::now();
    state_.threads = num_threads();
    state_.settings = settings_json(o_);
    if (!writes_run()) {
      last_checkpoint_ = checkpoints_ / checkpoint_name(state_.step);
      saved_step_ = state_.step;
      return;
    }
    try {
      last_checkpoint_ = save_checkpoint(checkpoints_, *model_, *optimizer_, state_, data_->tokenizer, o_.keep,
                                         [&](const fs::path& dir) {
                                           if (documents_) documents_->write_state(dir);
                                         });
    } catch (const std::exception& e) {
      fail("cannot write checkpoint ", checkpoint_name(state_.step), ": ", e.what(), "; ",
           last_checkpoint_.empty() ? std::string("no earlier checkpoint exists")
                                    : "the previous one, " + last_checkpoint_.string() + ", and latest are intact");
    }
    saved_step_ = state_.step;
    write_chart();
    note("saved " + last_checkpoint_.string());
  }

  void write_chart() const {
    if (!metrics_) return;
    write_file_atomically(run_ / kChartFile, loss_chart_svg(metrics_->rows(), "loss: " + run_.filename().string()));
  }

  TrainOptions o_;
  const TrainEvents& events_;
  const std::atomic<int>* stop_signal_;
  Communicator& comm_;
  bool distributed_;
  fs::path run_, checkpoints_;
  std::optional<TrainingData> data_;
  std::optional<MambaModel> model_;
  std::optional<AdamW> optimizer_;
  std::optional<MetricsLog> metrics_;
  Parameters grads_;
  std::optional<GradientReducer> reducer_;
  std::optional<DocumentBatches> documents_;  // --pack, --pad, --stateful
  LossOptions last_micro_batch_;  // reports the backward's progress to reducer_
  int agreed_stop_signal_ = 0;
  Rng data_rng_;
  TrainerState state_;
  int64_t saved_step_ = -1;
  fs::path last_checkpoint_;
  std::vector<int32_t> window_, tokens_, targets_;
  // This invocation: wall time since the last save (added to state_.elapsed_s there), time in steps.
  Clock::time_point start_;
  double step_seconds_ = 0;
  int64_t steps_here_ = 0, tokens_here_ = 0;  // tokens_here_: real targets
  // Time in steps spent waiting for the other ranks' sums; one all-reduce of the whole gradient.
  double comm_seconds_ = 0, allreduce_seconds_ = 0;
};

}  // namespace

void validate_options(TrainOptions& o) {
  if (o.out.empty()) fail_usage("--out is required: the run folder");
  if (o.data.empty() && !o.resume)
    fail_usage("--data is required (a folder written by `mambacpp prepare`) unless --resume continues a run");
  constexpr int64_t kMaxRows = int64_t(1) << 30;  // batch x seq-len x accum must stay well inside int64 / float
  require(o.d_model >= 1 && o.d_model <= (1 << 16), "--d-model", o.d_model, "must be in [1, 65536]");
  require(o.n_layer >= 1 && o.n_layer <= 1024, "--n-layer", o.n_layer, "must be in [1, 1024]");
  require(o.d_state >= 1 && o.d_state <= 1024, "--d-state", o.d_state, "must be in [1, 1024]");
  require(o.batch >= 1 && o.batch <= (1 << 20), "--batch", o.batch, "must be in [1, 1048576]");
  require(o.seq_len >= 1 && o.seq_len <= kMaxRows, "--seq-len", o.seq_len, "must be in [1, 2^30]");
  require(o.accum >= 1 && o.accum <= (1 << 20), "--accum", o.accum, "must be in [1, 1048576]");
  require(o.batch * o.seq_len * o.accum <= kMaxRows, "--batch x --seq-len x --accum", o.batch * o.seq_len * o.accum,
          "must be at most 2^30 tokens per step");
  require(std::isfinite(o.lr) && o.lr > 0, "--lr", o.lr, "must be > 0");
  if (!o.min_lr) o.min_lr = o.lr / 10;
  require(std::isfinite(*o.min_lr) && *o.min_lr >= 0 && *o.min_lr <= o.lr, "--min-lr", *o.min_lr, "must be in [0, --lr]");
  require(o.warmup >= 0, "--warmup", o.warmup, "must be >= 0");
  require(o.steps >= 1, "--steps", o.steps, "must be >= 1");
  require(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "--weight-decay", o.weight_decay, "must be >= 0");
  require(std::isfinite(o.grad_clip) && o.grad_clip >= 0, "--grad-clip", o.grad_clip, "must be >= 0 (0 = off)");
  require(o.eval_every >= 0, "--eval-every", o.eval_every, "must be >= 0 (0 = off)");
  require(o.eval_tokens >= 1, "--eval-tokens", o.eval_tokens, "must be >= 1");
  require(o.save_every >= 0, "--save-every", o.save_every, "must be >= 0");
  require(o.keep >= 1, "--keep", o.keep, "must be >= 1");
  require(o.stop_after >= 0, "--stop-after", o.stop_after, "must be >= 0 (0 = run to --steps)");
  require(o.threads >= 0 && o.threads <= 4096, "--threads", o.threads, "must be in [0, 4096] (0 = as it is)");
  require(o.dist_check_every >= 0, "--dist-check-every", o.dist_check_every, "must be >= 0 (0 = only at the start)");
  if (int(o.pack) + int(o.pad) + int(o.stateful) > 1)
    fail_usage("--pack, --pad and --stateful each choose how rows are made: give at most one (--stateful rows "
               "already hold documents back to back, like --pack)");
  const bool shape_given = was_given(o, "--d-model") || was_given(o, "--n-layer") || was_given(o, "--d-state");
  if (!o.config.empty() && shape_given)
    fail_usage("--config gives the model's shape: drop --d-model, --n-layer and --d-state");
  if (!o.init_from.empty() && (shape_given || !o.config.empty()))
    fail_usage("--init-from takes the model's shape from the checkpoint: drop --config and the shape flags");
  o.data = absolute_or_empty(o.data);
  o.config = absolute_or_empty(o.config);
  o.init_from = absolute_or_empty(o.init_from);
}

TrainSummary train(TrainOptions options, const TrainEvents& events, const std::atomic<int>* stop_signal,
                   Communicator* communicator) {
  validate_options(options);
  if (options.threads > 0) set_num_threads(int(options.threads));
  const std::unique_ptr<Communicator> alone = communicator ? nullptr : make_single_process_communicator();
  return Trainer(std::move(options), events, stop_signal, communicator ? *communicator : *alone, communicator != nullptr)
      .run();
}

}  // namespace mambacpp
