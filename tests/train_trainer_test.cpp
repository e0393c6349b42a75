// The trainer (src/train/trainer.h) and the `train` / `eval` commands on tiny models: resume bit
// for bit (20 steps = 10 + --resume 10), kill -9 at random moments of a run that checkpoints every
// step, SIGINT/SIGTERM, non-finite steps skipped and counted, a full disk (RLIMIT_FSIZE), bad data
// and flags; metrics.csv, loss.svg and checkpoint files read back on their own terms.
#include <fcntl.h>
#include <gtest/gtest.h>

#include <tuple>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "io/safetensors.h"
#include "model/mamba_model.h"
#include "test_support.h"
#include "train_test_support.h"
#include "text/tokenizer.h"
#include "train/loss_chart.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/progress.h"
#include "train/token_data.h"
#include "train/train_checkpoint.h"
#include "train/trainer.h"

namespace mambacpp {
namespace {

namespace fs = std::filesystem;
using testing::expect_bad_input;
using testing::list_dir;
using testing::read_bytes;
using testing::read_metrics;
using testing::read_text;
using testing::TempDir;
using testing::test_data;
using testing::write_bytes;
using testing::write_text;

// ---- A small data folder, as `prepare` writes it ---------------------------------------------

// English-like sentences from a fixed vocabulary: enough structure for the loss to fall.
std::string sentences(int count, uint64_t seed) {
  const std::vector<std::string> subjects = {"The cat", "A dog", "My friend", "The old man", "A bird", "Our teacher"};
  const std::vector<std::string> verbs = {"sees", "likes", "finds", "remembers", "paints", "follows"};
  const std::vector<std::string> objects = {"the sea.", "a red house.", "the moon.", "some bread.", "a long road.",
                                            "the garden."};
  Rng rng(seed);
  std::string text;
  for (int i = 0; i < count; ++i)
    text += subjects[rng.below(subjects.size())] + " " + verbs[rng.below(verbs.size())] + " " +
            objects[rng.below(objects.size())] + (i % 7 == 6 ? "\n" : " ");
  return text;
}

const fs::path kTokenizerJson = test_data("tokenizer/tokenizer.json");

// train.tokens, val.tokens (the fixture tokenizer's ids, its vocabulary) and tokenizer.json.
void make_data_folder(const fs::path& dir, int train_sentences = 400, int val_sentences = 40) {
  fs::create_directories(dir);
  const Tokenizer tokenizer = Tokenizer::from_file(kTokenizerJson);
  write_token_file(dir / "train.tokens", tokenizer.encode(sentences(train_sentences, 1)), tokenizer.vocab_size());
  write_token_file(dir / "val.tokens", tokenizer.encode(sentences(val_sentences, 2)), tokenizer.vocab_size());
  fs::copy_file(kTokenizerJson, dir / "tokenizer.json");
}

using testing::tiny_options;

// The same run as `mambacpp train` flags (plus `extra`).
std::vector<std::string> tiny_flags(const fs::path& data, const fs::path& out, std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"train", "--data", data.string(), "--out", out.string(), "--d-model", "16",
                                   "--n-layer", "2", "--d-state", "4", "--batch", "2", "--seq-len", "16",
                                   "--warmup", "3", "--lr", "0.03", "--eval-every", "5", "--eval-tokens", "96",
                                   "--threads", "1"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

std::string latest_name(const fs::path& run) {
  std::string text = read_text(run / "checkpoints" / "latest");
  if (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

// Two metric rows agree in everything a run determines (not in timings).
void expect_same_history(const std::vector<MetricsRow>& a, const std::vector<MetricsRow>& b) {
  ASSERT_EQ(a.size(), b.size());
  auto same = [](const std::optional<double>& x, const std::optional<double>& y) {
    return x.has_value() == y.has_value() && (!x || (std::isnan(*x) && std::isnan(*y)) || *x == *y);
  };
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].step, b[i].step);
    EXPECT_EQ(a[i].tokens, b[i].tokens) << "step " << a[i].step;
    EXPECT_TRUE(same(a[i].train_loss, b[i].train_loss)) << "train loss at step " << a[i].step;
    EXPECT_TRUE(same(a[i].val_loss, b[i].val_loss)) << "val loss at step " << a[i].step;
    EXPECT_TRUE(same(a[i].lr, b[i].lr)) << "lr at step " << a[i].step;
    EXPECT_TRUE(same(a[i].grad_norm, b[i].grad_norm)) << "grad norm at step " << a[i].step;
  }
}

// Runs the CLI in a child whose file size limit is `max_file_bytes` (SIGXFSZ ignored, so a write
// past it fails with EFBIG as on a full disk). Returns its pid; stdout / stderr go to files.
pid_t spawn_cli(const std::vector<std::string>& args, const fs::path& out, const fs::path& err,
                rlim_t max_file_bytes = RLIM_INFINITY) {
  std::vector<std::string> strings = {MAMBACPP_CLI};
  strings.insert(strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : strings) argv.push_back(s.data());
  argv.push_back(nullptr);
  const std::string out_path = out.string(), err_path = err.string();
  const pid_t pid = fork();
  if (pid == 0) {  // only async-signal-safe calls until exec
    if (max_file_bytes != RLIM_INFINITY) {
      const rlimit limit{max_file_bytes, max_file_bytes};
      setrlimit(RLIMIT_FSIZE, &limit);
      signal(SIGXFSZ, SIG_IGN);
    }
    const int o = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(o, 1);
    dup2(e, 2);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// The exit code, or 128 + the signal that ended the child.
int wait_for(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Polls until `done` holds or the child exits (false then).
template <class Done>
bool wait_until(pid_t pid, Done done) {
  for (int i = 0; i < 60000; ++i) {
    if (done()) return true;
    if (waitpid(pid, nullptr, WNOHANG) == pid) return false;  // reaped: it ended first
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    make_data_folder(data());
  }
  static void TearDownTestSuite() { delete dir_; }
  void SetUp() override { set_num_threads(1); }
  static fs::path data() { return dir_->path() / "data"; }
  static fs::path temp(const std::string& name) { return dir_->path() / name; }

  static TempDir* dir_;
};
TempDir* TrainerTest::dir_ = nullptr;

// ---- Options ------------------------------------------------------------------------------------

// Out-of-range values are bad input; flags that cannot go together, or a missing one, are usage errors.
TEST_F(TrainerTest, BadFlagValuesAreErrorsNamingTheFlag) {
  const fs::path out = temp("never-created");
  struct Case {
    const char* flag;
    std::function<void(TrainOptions&)> set;
    ErrorKind kind = ErrorKind::BadInput;
  };
  const std::vector<Case> cases = {
      {"--steps", [](TrainOptions& o) { o.steps = 0; }},
      {"--lr", [](TrainOptions& o) { o.lr = -1e-3; }},
      {"--lr", [](TrainOptions& o) { o.lr = NAN; }},
      {"--min-lr", [](TrainOptions& o) { o.min_lr = 1.0; }},
      {"--accum", [](TrainOptions& o) { o.accum = 0; }},
      {"--batch", [](TrainOptions& o) { o.batch = 0; }},
      {"--seq-len", [](TrainOptions& o) { o.seq_len = 0; }},
      {"--keep", [](TrainOptions& o) { o.keep = 0; }},
      {"--grad-clip", [](TrainOptions& o) { o.grad_clip = -1; }},
      {"--weight-decay", [](TrainOptions& o) { o.weight_decay = INFINITY; }},
      {"--eval-tokens", [](TrainOptions& o) { o.eval_tokens = 0; }},
      {"--warmup", [](TrainOptions& o) { o.warmup = -1; }},
      {"--d-model", [](TrainOptions& o) { o.d_model = 0; }},
      {"--config", [](TrainOptions& o) { o.config = "c.json", o.given = {"--d-model"}; }, ErrorKind::Usage},
      {"--init-from", [](TrainOptions& o) { o.init_from = "ckpt", o.config = "c.json"; }, ErrorKind::Usage},
      {"--data", [](TrainOptions& o) { o.data.clear(); }, ErrorKind::Usage},
  };
  for (const Case& c : cases) {
    TrainOptions o = tiny_options(data(), out);
    c.set(o);
    try {
      train(o);
      ADD_FAILURE() << c.flag << ": no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), c.kind) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.flag), std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(fs::exists(out));
}

// The project's exit codes: 2 for a value that does not parse, 1 for one that parses but is out of range.
TEST_F(TrainerTest, CliFlagsThatDoNotParseExitTwoAndOutOfRangeExitOne) {
  const fs::path out = temp("cli-bad-flags");
  for (const auto& [flag, value, code] : std::vector<std::tuple<std::string, std::string, int>>{
           {"--steps", "0", 1}, {"--steps", "ten", 2}, {"--grad-clip", "-1", 1}, {"--accum", "0", 1},
           {"--weight-decay", "x", 2}}) {
    const testing::CliRun r = testing::run_cli(tiny_flags(data(), out, {flag, value}));
    EXPECT_EQ(r.code, code) << flag << " " << value << "\n" << r.err;
    EXPECT_NE(r.err.find(flag), std::string::npos) << r.err;
  }
  EXPECT_FALSE(fs::exists(out));
}

// ---- Metrics and chart --------------------------------------------------------------------------

TEST(Metrics, RowsRoundTripAndResumeDropsLaterAndPartialRows) {
  MetricsRow row{12, 4096, 3.25, std::nullopt, 1e-3, NAN, 1234.5, 9.5};
  const std::string line = format_metrics_row(row);
  EXPECT_EQ(line, "12,4096,3.25,,0.001,nan,1234.5,9.500");
  const auto back = parse_metrics_row(line);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->step, 12);
  EXPECT_EQ(back->train_loss, 3.25);
  EXPECT_FALSE(back->val_loss);
  EXPECT_TRUE(std::isnan(*back->grad_norm));
  for (const char* bad : {"12,4096,3.25,,0.001,nan,1234.5", "x,1,,,,,,0", "1,2,3,4,5,6,7,8,9", "-1,0,,,,,,0"})
    EXPECT_FALSE(parse_metrics_row(bad)) << bad;

  TempDir dir;
  const fs::path path = dir / "metrics.csv";
  write_text(path, std::string(kMetricsHeader) + "\n0,0,,5,,,,0.1\n1,8,5.5,,0.001,1,10,0.2\n2,16,5.4,,0.001,1,10,0.3\n"
                   "3,24,5.3,,0.001,1,10,0.4\n4,32,5.");  // killed mid-row
  {
    MetricsLog log = MetricsLog::resume(path, 2);
    EXPECT_EQ(log.rows().size(), 3u);
    log.append(MetricsRow{3, 24, 5.25, 5.0, 0.001, 1.0, 10.0, 0.5});
  }
  EXPECT_EQ(read_text(path), std::string(kMetricsHeader) +
                                 "\n0,0,,5,,,,0.100\n1,8,5.5,,0.001,1,10,0.200\n2,16,5.4,,0.001,1,10,0.300\n"
                                 "3,24,5.25,5,0.001,1,10,0.500\n");
}

// Every tag closes in order; the chart names its axes and curves.
void expect_well_formed_chart(const std::string& svg) {
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  std::vector<std::string> open;
  for (size_t i = svg.find('<', 1); i != std::string::npos; i = svg.find('<', i + 1)) {
    const size_t end = svg.find('>', i);
    ASSERT_NE(end, std::string::npos);
    const std::string tag = svg.substr(i + 1, end - i - 1);
    if (tag.empty()) FAIL() << "empty tag";
    if (tag.back() == '/') continue;  // <x/>
    const std::string name = tag.substr(tag[0] == '/', tag.find_first_of(" />", 1) - (tag[0] == '/'));
    if (tag[0] != '/') {
      open.push_back(name);
    } else {
      ASSERT_FALSE(open.empty()) << "</" << name << "> closes nothing";
      ASSERT_EQ(open.back(), name);
      open.pop_back();
    }
  }
  EXPECT_TRUE(open.empty()) << "unclosed <" << open.back() << ">";
  for (const char* text : {">step</text>", ">loss (nats per token)</text>", ">train loss</text>"})
    EXPECT_NE(svg.find(text), std::string::npos) << text;
}

TEST(LossChart, IsWellFormedWithCurvesLegendAndTicks) {
  std::vector<MetricsRow> rows;
  for (int s = 0; s <= 3000; ++s) {
    MetricsRow r;
    r.step = s;
    if (s > 0) r.train_loss = s == 17 ? NAN : 7.0 / std::sqrt(double(s));
    if (s % 500 == 0) r.val_loss = 7.2 / std::sqrt(double(s + 1));
    rows.push_back(r);
  }
  const std::string svg = loss_chart_svg(rows, "loss: run <1> & co");
  expect_well_formed_chart(svg);
  EXPECT_NE(svg.find(">val loss</text>"), std::string::npos);
  EXPECT_NE(svg.find("run &lt;1&gt; &amp; co"), std::string::npos);
  EXPECT_NE(svg.find(">3000</text>"), std::string::npos);  // the last x tick
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  // 3000 train losses averaged down to at most 1000 points.
  const size_t points = svg.find("points=\"", svg.find("<polyline")) + 8;
  const std::string train_points = svg.substr(points, svg.find('"', points) - points);
  EXPECT_LE(std::count(train_points.begin(), train_points.end(), ','), 1000);
  EXPECT_GE(std::count(train_points.begin(), train_points.end(), ','), 900);
  expect_well_formed_chart(loss_chart_svg({}, "empty"));
}

TEST(Progress, DurationsLogLinesAndTheBar) {
  EXPECT_EQ(format_duration(45), "45s");
  EXPECT_EQ(format_duration(252), "4m12s");
  EXPECT_EQ(format_duration(7500), "2h05m");
  EXPECT_EQ(format_duration(NAN), "?");
  StepReport r;
  r.step = 3;
  r.steps = 12;
  r.train_loss = 2.5;
  r.lr = 1e-3;
  r.tok_per_s = 25000;
  r.eta_s = 90;
  for (const bool terminal : {false, true}) {
    std::FILE* f = std::tmpfile();
    {
      ProgressDisplay display(f, terminal);
      display.step(r);
      display.note("saved x");
    }
    std::rewind(f);
    char buffer[512] = {};
    const std::string text(buffer, std::fread(buffer, 1, sizeof buffer - 1, f));
    std::fclose(f);
    const std::string fields = "loss 2.5000 | 25.0k tok/s | lr 1.00e-03 | ETA 1m30s";
    EXPECT_EQ(text, terminal ? "\r\033[K3/12 [######..................] " + fields + "\r\033[Ksaved x\n"
                             : "step 3/12 | " + fields + "\nsaved x\n");
  }
}

// ---- Checkpoint files ---------------------------------------------------------------------------

MambaConfig tiny_config() {
  MambaConfig c;
  c.vocab_size = 50;
  c.d_model = 8;
  c.n_layer = 2;
  c.d_state = 4;
  c.d_inner = 16;
  c.dt_rank = 1;
  return c;
}

TEST(TrainCheckpoint, RoundTripsModelMomentsAndStateAndPrunes) {
  TempDir dir;
  const MambaModel model = MambaModel::random(tiny_config(), 7);
  AdamW optimizer(model.config(), AdamWOptions{});
  Rng fill(3);
  for (Parameters* p : {&optimizer.first_moment(), &optimizer.second_moment()})
    for (const ParamSpec& s : p->table().specs()) {
      std::vector<float> v(size_t(s.numel()));
      for (float& x : v) x = float(fill.normal());
      p->assign(s, DType::F32, v.data());
    }
  TrainerState state;
  state.tokens = 123456;
  state.adamw_steps = 9;
  state.data_rng = {1, 0xffffffffffffffffull, 0x8000000000000000ull, 42};
  state.skipped_total = 2;
  state.skipped_in_a_row = 1;
  state.threads = 3;
  state.settings = {{"--lr", 0.001}};
  const fs::path checkpoints = dir / "checkpoints";
  fs::create_directory(checkpoints);
  for (int64_t step : {5, 10, 15}) {
    state.step = step;
    EXPECT_EQ(save_checkpoint(checkpoints, model, optimizer, state, kTokenizerJson, 2), checkpoints / checkpoint_name(step));
  }
  EXPECT_EQ(list_dir(checkpoints), (std::vector<std::string>{"latest", "step-00000010", "step-00000015"}));
  const fs::path latest = *find_latest_checkpoint(checkpoints);
  EXPECT_EQ(latest, checkpoints / "step-00000015");
  EXPECT_EQ(list_dir(latest), (std::vector<std::string>{"config.json", "generation_config.json", "model.safetensors",
                                                        "optimizer.safetensors", "tokenizer.json", "trainer_state.json"}));

  LoadOptions f32;
  f32.weights = WeightType::F32;
  const MambaModel loaded = MambaModel::load(latest, f32);
  const auto a = model.hf_tensors(DType::F32), b = loaded.hf_tensors(DType::F32);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(std::memcmp(a[i].second.raw(), b[i].second.raw(), a[i].second.nbytes()), 0) << a[i].first;

  const TrainerState back = read_trainer_state(latest);
  EXPECT_EQ(back.step, 15);
  EXPECT_EQ(back.tokens, 123456);
  EXPECT_EQ(back.adamw_steps, 9);
  EXPECT_EQ(back.data_rng, state.data_rng);
  EXPECT_EQ(back.skipped_total, 2);
  EXPECT_EQ(back.skipped_in_a_row, 1);
  EXPECT_EQ(back.threads, 3);
  EXPECT_EQ(back.settings, state.settings);

  AdamW restored(model.config(), AdamWOptions{});
  read_optimizer_state(latest, back.adamw_steps, restored);
  EXPECT_EQ(restored.steps_taken(), 9);
  for (auto [x, y] : {std::pair{&optimizer.first_moment(), &restored.first_moment()},
                      std::pair{&optimizer.second_moment(), &restored.second_moment()}})
    for (ParamKind kind : {ParamKind::Matrix, ParamKind::Vector})
      EXPECT_EQ(std::memcmp(x->region(kind), y->region(kind),
                            size_t(x->table().region_elements(kind)) * sizeof(float)), 0);

  // Going back to an earlier step drops the folders of the future it redoes.
  state.step = 12;
  save_checkpoint(checkpoints, model, optimizer, state, std::nullopt, 3);
  EXPECT_EQ(list_dir(checkpoints), (std::vector<std::string>{"latest", "step-00000010", "step-00000012"}));
}

TEST(TrainCheckpoint, DamagedFilesAreBadInputNamingTheFault) {
  TempDir dir;
  const MambaModel model = MambaModel::random(tiny_config(), 7);
  const AdamW optimizer(model.config(), AdamWOptions{});
  TrainerState state;
  state.step = 4;
  const fs::path ck = save_checkpoint(dir.path(), model, optimizer, state, std::nullopt, 1);

  write_text(dir / "latest", "step-0000000x\n");
  expect_bad_input([&] { find_latest_checkpoint(dir.path()); }, {"latest", "step-0000000x"});
  write_text(dir / "latest", "step-00000009\n");
  expect_bad_input([&] { find_latest_checkpoint(dir.path()); }, {"step-00000009", "not a folder"});

  // A moment missing from optimizer.safetensors.
  const SafetensorsFile moments = read_safetensors(ck / "optimizer.safetensors");
  std::vector<std::pair<std::string, Tensor>> fewer;
  for (const auto& [name, t] : moments.tensors)
    if (name != "exp_avg_sq.backbone.norm_f.weight") fewer.emplace_back(name, t);
  write_safetensors(dir / "fewer.safetensors", fewer);
  fs::rename(dir / "fewer.safetensors", ck / "optimizer.safetensors");
  AdamW target(model.config(), AdamWOptions{});
  expect_bad_input([&] { read_optimizer_state(ck, 0, target); }, {"optimizer.safetensors", "exp_avg_sq.backbone.norm_f.weight"});

  std::string text = read_text(ck / "trainer_state.json");
  text.replace(text.find("\"0x"), 3, "\"1x");
  write_text(ck / "trainer_state.json", text);
  expect_bad_input([&] { read_trainer_state(ck); }, {"trainer_state.json", "data_rng"});
}

// ---- Training runs ------------------------------------------------------------------------------

TEST_F(TrainerTest, ResumeIsBitExact) {
  for (int64_t accum : {1, 2}) {
    SCOPED_TRACE(cat("accum ", accum));
    const fs::path whole = temp(cat("whole-", accum)), parts = temp(cat("parts-", accum));
    TrainOptions o = tiny_options(data(), whole);
    o.accum = accum;
    const TrainSummary full = train(o);
    EXPECT_TRUE(full.finished);
    EXPECT_EQ(full.step, 20);

    o.out = parts.string();
    o.stop_after = 10;
    const TrainSummary first = train(o);
    EXPECT_FALSE(first.finished);
    EXPECT_EQ(first.stopped_by, "--stop-after");
    EXPECT_EQ(first.step, 10);
    TrainOptions again;  // only --out and --resume: every setting comes from the checkpoint
    again.out = parts.string();
    again.resume = true;
    const TrainSummary second = train(again);
    EXPECT_TRUE(second.finished);

    expect_same_history(read_metrics(whole), read_metrics(parts));
    for (const char* file : {"model.safetensors", "optimizer.safetensors"})
      EXPECT_EQ(read_bytes(whole / "checkpoints/step-00000020" / file), read_bytes(parts / "checkpoints/step-00000020" / file))
          << file;
    // The loss fell.
    const std::vector<MetricsRow> rows = read_metrics(whole);
    EXPECT_LT(*rows.back().val_loss, *rows.front().val_loss - 0.5);
  }
}

TEST_F(TrainerTest, MetricsHaveARowPerStepAndTheChartIsWritten) {
  const fs::path run = temp("metrics-run");
  TrainOptions o = tiny_options(data(), run);
  o.steps = 12;
  o.save_every = 4;
  o.keep = 2;
  train(o);
  const std::string text = read_text(run / "metrics.csv");
  EXPECT_EQ(text.substr(0, text.find('\n')), "step,tokens,train_loss,val_loss,lr,grad_norm,tok_per_s,elapsed_s");
  const std::vector<MetricsRow> rows = read_metrics(run);
  ASSERT_EQ(rows.size(), 13u);
  EXPECT_FALSE(rows[0].train_loss);  // row 0: the initial val loss only
  ASSERT_TRUE(rows[0].val_loss);
  EXPECT_NEAR(*rows[0].val_loss, std::log(2000.0), 0.5);  // a fresh model guesses about uniformly
  for (size_t i = 1; i < rows.size(); ++i) {
    const MetricsRow& r = rows[i];
    EXPECT_EQ(r.step, int64_t(i));
    EXPECT_EQ(r.tokens, r.step * 2 * 16);
    EXPECT_TRUE(r.train_loss && std::isfinite(*r.train_loss));
    EXPECT_EQ(r.val_loss.has_value(), r.step % 5 == 0 || r.step == 12) << r.step;
    const double lr = learning_rate(r.step - 1, 3, 12, 0.03, 0.03 / 10);
    EXPECT_NEAR(*r.lr, lr, 1e-8 * lr) << r.step;  // printed with 9 digits
    EXPECT_GT(*r.grad_norm, 0);
    EXPECT_GT(*r.tok_per_s, 0);
    EXPECT_GE(r.elapsed_s, rows[i - 1].elapsed_s);
  }
  EXPECT_EQ(list_dir(run), (std::vector<std::string>{"checkpoints", "loss.svg", "metrics.csv"}));
  EXPECT_EQ(list_dir(run / "checkpoints"), (std::vector<std::string>{"latest", "step-00000008", "step-00000012"}));
  expect_well_formed_chart(read_text(run / "loss.svg"));
}

TEST_F(TrainerTest, NonFiniteStepsAreSkippedAndFiveInARowStopTheRun) {
  const fs::path once = temp("nan-once");
  TrainOptions o = tiny_options(data(), once);
  o.steps = 8;
  o.poison_loss_at_steps = {3};
  const TrainSummary s = train(o);
  EXPECT_TRUE(s.finished);
  EXPECT_EQ(s.skipped_steps, 1);
  const TrainerState state = read_trainer_state(once / "checkpoints/step-00000008");
  EXPECT_EQ(state.skipped_total, 1);
  EXPECT_EQ(state.adamw_steps, 7);
  EXPECT_TRUE(std::isnan(*read_metrics(once)[3].train_loss));

  const fs::path streak = temp("nan-streak");
  o = tiny_options(data(), streak);
  o.save_every = 5;
  o.poison_loss_at_steps = {6, 7, 8, 9, 10, 11};
  const std::vector<std::byte> saved_model = [&] {
    TrainOptions first = o;
    first.stop_after = 5;
    train(first);
    return read_bytes(streak / "checkpoints/step-00000005/model.safetensors");
  }();
  TrainOptions resume;
  resume.out = streak.string();
  resume.resume = true;
  resume.poison_loss_at_steps = o.poison_loss_at_steps;
  expect_bad_input([&] { train(resume); }, {"steps 6 to 10", "5 in a row", "step-00000005", "intact"});
  EXPECT_EQ(latest_name(streak), "step-00000005");
  EXPECT_EQ(read_bytes(streak / "checkpoints/step-00000005/model.safetensors"), saved_model);
  EXPECT_EQ(read_trainer_state(streak / "checkpoints/step-00000005").step, 5);
  EXPECT_EQ(read_metrics(streak).back().step, 10);
}

TEST_F(TrainerTest, ARunIsNeverOverwrittenAndResumeNeedsACheckpoint) {
  const fs::path run = temp("guarded");
  TrainOptions o = tiny_options(data(), run);
  o.steps = 2;
  o.eval_every = 0;
  TrainOptions resume = o;
  resume.resume = true;
  expect_bad_input([&] { train(resume); }, {"--resume", "no checkpoint"});
  train(o);
  const std::vector<std::byte> model = read_bytes(run / "checkpoints/step-00000002/model.safetensors");
  expect_bad_input([&] { train(o); }, {"--out", "holds a run", "--resume"});
  EXPECT_EQ(read_bytes(run / "checkpoints/step-00000002/model.safetensors"), model);

  // A Run setting given again must agree.
  resume.given = {"--lr"};
  resume.lr = 0.5;
  try {
    train(resume);
    ADD_FAILURE() << "a changed --lr was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Usage);
    EXPECT_NE(std::string(e.what()).find("--lr 0.5 differs from the run's 0.03"), std::string::npos) << e.what();
  }
}

TEST_F(TrainerTest, ResumeMayChangeTheCheckpointCadence) {
  const fs::path run = temp("cadence");
  TrainOptions o = tiny_options(data(), run);
  o.steps = 4;
  o.eval_every = 0;
  o.save_every = 1;
  o.keep = 3;
  o.stop_after = 1;
  train(o);
  TrainOptions resume;
  resume.out = run.string();
  resume.resume = true;
  resume.save_every = 2;
  resume.keep = 1;
  resume.given = {"--save-every", "--keep"};
  EXPECT_TRUE(train(resume).finished);
  EXPECT_EQ(list_dir(run / "checkpoints"), (std::vector<std::string>{"latest", "step-00000004"}));
  EXPECT_EQ(read_trainer_state(run / "checkpoints/step-00000004").settings.at("--save-every"), 2);
}

TEST_F(TrainerTest, InitFromContinuesAModelAndConfigGivesTheShape) {
  const fs::path first = temp("init-source");
  TrainOptions o = tiny_options(data(), first);
  o.steps = 6;
  train(o);
  const fs::path ckpt = first / "checkpoints/step-00000006";
  const double trained_val = *read_metrics(first).back().val_loss;

  // --init-from: the new run's step-0 val loss is the checkpoint's (same windows, same weights).
  TrainOptions from = tiny_options(data(), temp("init-from"));
  from.init_from = ckpt.string();
  from.steps = 2;
  train(from);
  EXPECT_EQ(*read_metrics(temp("init-from"))[0].val_loss, trained_val);

  // --config: the checkpoint's shape with fresh weights (its eos id kept).
  TrainOptions shaped = tiny_options(data(), temp("init-config"));
  shaped.config = (ckpt / "config.json").string();
  shaped.d_model = 64;  // ignored: not given as a flag
  shaped.steps = 2;
  train(shaped);
  const fs::path shaped_ckpt = temp("init-config") / "checkpoints/step-00000002";
  EXPECT_EQ(read_text(shaped_ckpt / "config.json"), read_text(temp("init-from") / "checkpoints/step-00000002/config.json"));
  EXPECT_NE(*read_metrics(temp("init-config"))[0].val_loss, trained_val);
  const nlohmann::json config = nlohmann::json::parse(read_text(shaped_ckpt / "config.json"));
  EXPECT_EQ(config.at("eos_token_id"), Tokenizer::from_file(kTokenizerJson).token_to_id("<|endoftext|>").value());
  EXPECT_EQ(config.at("hidden_size"), 16);
  EXPECT_EQ(config.at("vocab_size"), 2000);
}

TEST_F(TrainerTest, BadRunFoldersAndDataAreClearErrors) {
  const fs::path run = temp("bad-inputs-run");
  // A folder that is not a run.
  fs::create_directories(temp("foreign"));
  write_text(temp("foreign") / "notes.txt", "mine");
  expect_bad_input([&] { train(tiny_options(data(), temp("foreign"))); }, {"notes.txt", "not part of a run"});
  // An unwritable RUN: its parent is a file.
  expect_bad_input([&] { train(tiny_options(data(), temp("foreign") / "notes.txt" / "run")); }, {"--out", "cannot create"});
  expect_bad_input([&] { train(tiny_options(data(), temp("foreign") / "notes.txt")); }, {"--out", "not a folder"});

  // Damaged data folders; nothing is created.
  const fs::path bad = temp("bad-data");
  auto fresh_copy = [&] {
    fs::remove_all(bad);
    fs::copy(data(), bad);
  };
  fresh_copy();
  std::vector<std::byte> bytes = read_bytes(bad / "train.tokens");
  bytes.pop_back();
  write_bytes(bad / "train.tokens", bytes);
  expect_bad_input([&] { train(tiny_options(bad, run)); }, {"train.tokens", "truncated"});

  fresh_copy();
  bytes = read_bytes(bad / "val.tokens");
  bytes[12] = std::byte{10};  // the header's vocabulary size, now below most ids
  bytes[13] = bytes[14] = bytes[15] = std::byte{0};
  write_bytes(bad / "val.tokens", bytes);
  expect_bad_input([&] { train(tiny_options(bad, run)); }, {"val.tokens", "outside the vocabulary"});

  fresh_copy();
  write_token_file(bad / "train.tokens", std::vector<int32_t>(10, 5), 2000);
  expect_bad_input([&] { train(tiny_options(bad, run)); }, {"--seq-len 16", "17 tokens", "holds only 10"});

  fresh_copy();
  fs::remove(bad / "train.tokens");
  expect_bad_input([&] { train(tiny_options(bad, run)); }, {"--data", "train.tokens"});

  // A config whose vocabulary is smaller than the data's.
  const fs::path config = temp("small-vocab.json");
  nlohmann::json cfg = {{"model_type", "mamba"}, {"vocab_size", 100}, {"hidden_size", 16}, {"num_hidden_layers", 1},
                        {"state_size", 4},       {"intermediate_size", 32}, {"conv_kernel", 4}, {"time_step_rank", 1}};
  write_text(config, cfg.dump());
  TrainOptions o = tiny_options(data(), run);
  o.config = config.string();
  expect_bad_input([&] { train(o); }, {"--config", "100 tokens", "2000"});
  EXPECT_FALSE(fs::exists(run));
}

// ---- The command line ---------------------------------------------------------------------------

TEST_F(TrainerTest, KillNineAtRandomMomentsAlwaysLeavesALoadableLatest) {
  const std::vector<std::string> extra = {"--steps", "12", "--save-every", "1", "--keep", "2"};
  // An uninterrupted run, timed: the kills below land anywhere in one like it.
  const fs::path reference = temp("kill-reference");
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(testing::run_cli(tiny_flags(data(), reference, extra)).code, 0);
  const auto run_time = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start);
  const std::vector<std::byte> final_model = read_bytes(reference / "checkpoints/step-00000012/model.safetensors");
  Rng delays(2024);
  int killed_mid_run = 0;
  for (int attempt = 0; attempt < 5; ++attempt) {
    SCOPED_TRACE(cat("attempt ", attempt));
    const fs::path run = temp(cat("killed-", attempt));
    const pid_t pid = spawn_cli(tiny_flags(data(), run, extra), temp("kill.out"), temp("kill.err"));
    std::this_thread::sleep_for(std::chrono::microseconds(delays.below(uint64_t(run_time.count()))));
    kill(pid, SIGKILL);
    killed_mid_run += wait_for(pid) == 128 + SIGKILL;

    std::vector<std::string> finish = {"train", "--out", run.string(), "--save-every", "0", "--threads", "1"};
    if (const std::optional<fs::path> latest = find_latest_checkpoint(run / "checkpoints")) {
      const TrainerState state = read_trainer_state(*latest);
      EXPECT_EQ(latest->filename().string(), checkpoint_name(state.step));
      LoadOptions f32;
      f32.weights = WeightType::F32;
      EXPECT_NO_THROW(MambaModel::load(*latest, f32));
      finish.push_back("--resume");  // (without per-step checkpoints, for speed)
    } else {  // killed before the first checkpoint: nothing to resume, the run starts over
      EXPECT_EQ(testing::run_cli({"train", "--out", run.string(), "--resume"}).code, 1);
      finish = tiny_flags(data(), run, {"--steps", "12"});
    }
    const testing::CliRun finished = testing::run_cli(finish);
    ASSERT_EQ(finished.code, 0) << finished.err;
    // It ends where the uninterrupted run did, bit for bit.
    EXPECT_EQ(read_bytes(run / "checkpoints/step-00000012/model.safetensors"), final_model);
    expect_same_history(read_metrics(reference), read_metrics(run));
    for (const std::string& name : list_dir(run / "checkpoints")) EXPECT_NE(name[0], '.') << name;
  }
  EXPECT_GE(killed_mid_run, 1) << "every kill came after the run had ended: nothing was tested";
}

TEST_F(TrainerTest, SigintAndSigtermSaveAndExitZero) {
  for (const int sig : {SIGTERM, SIGINT}) {
    const fs::path run = temp(cat("signalled-", sig));
    const pid_t pid = spawn_cli(tiny_flags(data(), run, {"--steps", "100000"}), temp("sig.out"),
                                temp("sig.err"));
    ASSERT_TRUE(wait_until(pid, [&] {
      const std::string metrics = fs::exists(run / "metrics.csv") ? read_text(run / "metrics.csv") : "";
      return std::count(metrics.begin(), metrics.end(), '\n') >= 4;  // the header and 3 steps
    }));
    kill(pid, sig);
    EXPECT_EQ(wait_for(pid), 0) << read_text(temp("sig.err"));
    const std::string out = read_text(temp("sig.out"));
    EXPECT_NE(out.find(sig == SIGTERM ? "stopped by SIGTERM" : "stopped by SIGINT"), std::string::npos) << out;
    EXPECT_NE(out.find("--resume"), std::string::npos) << out;
    const fs::path latest = *find_latest_checkpoint(run / "checkpoints");
    const int64_t step = read_trainer_state(latest).step;
    EXPECT_GE(step, 3);
    EXPECT_EQ(read_metrics(run).back().step, step);
    EXPECT_NO_THROW(MambaModel::load(latest));
  }
}

TEST_F(TrainerTest, AFullDiskFailsTheCheckpointAndKeepsTheEarlierOne) {
  const fs::path run = temp("full-disk");
  const std::vector<std::string> flags = tiny_flags(data(), run, {"--steps", "6", "--save-every", "2"});
  std::vector<std::string> first = flags;
  first.insert(first.end(), {"--stop-after", "2"});
  ASSERT_EQ(testing::run_cli(first).code, 0);
  const std::vector<std::byte> model = read_bytes(run / "checkpoints/step-00000002/model.safetensors");

  // model.safetensors (2000 x 16 floats and more) cannot be written under 64 KiB.
  const pid_t pid = spawn_cli({"train", "--out", run.string(), "--resume", "--threads", "1"}, temp("fsize.out"),
                              temp("fsize.err"), 64 << 10);
  EXPECT_EQ(wait_for(pid), 1);
  const std::string err = read_text(temp("fsize.err"));
  EXPECT_NE(err.find("cannot write checkpoint step-00000004"), std::string::npos) << err;
  EXPECT_NE(err.find("intact"), std::string::npos) << err;
  EXPECT_EQ(latest_name(run), "step-00000002");
  EXPECT_EQ(list_dir(run / "checkpoints"), (std::vector<std::string>{"latest", "step-00000002"}));
  EXPECT_EQ(read_bytes(run / "checkpoints/step-00000002/model.safetensors"), model);

  const testing::CliRun resumed = testing::run_cli({"train", "--out", run.string(), "--resume", "--threads", "1"});
  EXPECT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_EQ(latest_name(run), "step-00000006");
}

TEST_F(TrainerTest, EvalPrintsTheRunsValLossAndItsPerplexityAndGenerateLoadsTheCheckpoint) {
  const fs::path run = temp("eval-run");
  ASSERT_EQ(testing::run_cli(tiny_flags(data(), run, {"--steps", "10"})).code, 0);
  const double run_val = *read_metrics(run).back().val_loss;
  const std::string ckpt = (run / "checkpoints/step-00000010").string();
  const testing::CliRun r = testing::run_cli({"eval", "--model", ckpt, "--data", data().string(), "--batch", "2",
                                              "--seq-len", "16", "--tokens", "96", "--threads", "1"});
  ASSERT_EQ(r.code, 0) << r.err;
  double loss = 0, perplexity = 0;
  ASSERT_EQ(std::sscanf(r.out.c_str(), "loss %lf\nperplexity %lf\n", &loss, &perplexity), 2) << r.out;
  EXPECT_NEAR(loss, run_val, 1e-6);
  EXPECT_NEAR(perplexity, std::exp(loss), 1e-5 * std::exp(loss));

  const testing::CliRun gen = testing::run_cli({"generate", "--model", ckpt, "--prompt", "The cat", "-n", "4",
                                                "--threads", "1"});
  EXPECT_EQ(gen.code, 0) << gen.err;
  EXPECT_EQ(gen.out.rfind("The cat", 0), 0u) << gen.out;

  EXPECT_EQ(testing::run_cli({"eval", "--model", ckpt, "--data", temp("nowhere").string()}).code, 1);
  EXPECT_EQ(testing::run_cli({"eval", "--model", ckpt, "--data", data().string(), "--seq-len", "0"}).code, 1);
  EXPECT_EQ(testing::run_cli({"eval", "--model", ckpt, "--data", data().string(), "--seq-len", "many"}).code, 2);
}

}  // namespace
}  // namespace mambacpp
