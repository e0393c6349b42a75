// Data-parallel training (src/train/distributed.h, docs/DISTRIBUTED.md): the window shares and
// gradient buckets on their own terms, then `mpirun -np 2 mambacpp train --distributed` on a tiny
// model against one process with the same global batch (losses within 1e-5 over 20 steps),
// resuming a 2-rank checkpoint with 1 rank and the reverse, and a rank that dies or hangs (the
// others stop within the timeout with a message; the last checkpoint still loads).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "io/config.h"
#include "model/mamba_model.h"
#include "test_support.h"
#include "train_test_support.h"
#include "text/tokenizer.h"
#include "train/distributed.h"
#include "train/metrics.h"
#include "train/token_data.h"
#include "train/train_checkpoint.h"
#include "train/trainer.h"

namespace mambacpp {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using testing::read_metrics;
using testing::read_text;
using testing::TempDir;
using testing::test_data;

// ---- Window shares ------------------------------------------------------------------------------

TEST(WindowShare, ContiguousSharesCoverEveryWindowOnceAndDifferByAtMostOne) {
  for (int64_t windows = 1; windows <= 24; ++windows)
    for (int size = 1; size <= std::min<int64_t>(windows, 7); ++size) {
      int64_t next = 0, smallest = windows, largest = 0;
      for (int rank = 0; rank < size; ++rank) {
        const WindowShare s = window_share(windows, rank, size);
        ASSERT_EQ(s.first, next) << windows << " windows, rank " << rank << " of " << size;
        next = s.end;
        smallest = std::min(smallest, s.end - s.first);
        largest = std::max(largest, s.end - s.first);
      }
      EXPECT_EQ(next, windows) << windows << " windows over " << size << " ranks";
      EXPECT_LE(largest - smallest, 1) << windows << " windows over " << size << " ranks";
      EXPECT_GE(smallest, 1) << windows << " windows over " << size << " ranks";
    }
}

// ---- Gradient buckets ---------------------------------------------------------------------------

MambaConfig bucket_test_config(bool tied) {
  MambaConfig c;
  c.vocab_size = 300;
  c.d_model = 32;
  c.n_layer = 5;
  c.d_state = 8;
  c.d_inner = 64;
  c.dt_rank = 2;
  c.use_bias = true;  // more vector tensors, more padding between them
  c.tie_embeddings = tied;
  return c;
}

// Every element of both regions in exactly one range of one bucket, and each range inside the
// tensors (plus padding) of the layers its bucket says it holds.
void expect_partition(const ParameterTable& table, const std::vector<GradientBucket>& buckets) {
  for (ParamKind kind : {ParamKind::Matrix, ParamKind::Vector}) {
    std::vector<int> covered(size_t(table.region_elements(kind)), 0);
    for (const GradientBucket& b : buckets)
      for (const GradientRange& r : b.ranges)
        if (r.kind == kind)
          for (int64_t i = r.first; i < r.first + r.count; ++i) ++covered[size_t(i)];
    for (size_t i = 0; i < covered.size(); ++i)
      ASSERT_EQ(covered[i], 1) << "element " << i << " of the " << (kind == ParamKind::Matrix ? "matrix" : "vector")
                               << " region is in " << covered[i] << " bucket ranges";
  }
}

// The bucket holding a spec's first element.
size_t bucket_of(const std::vector<GradientBucket>& buckets, const ParamSpec& s) {
  for (size_t b = 0; b < buckets.size(); ++b)
    for (const GradientRange& r : buckets[b].ranges)
      if (r.kind == s.kind && s.offset >= r.first && s.offset < r.first + r.count) return b;
  ADD_FAILURE() << s.name << " is in no bucket";
  return 0;
}

TEST(GradientBuckets, CoverTheBufferOnceInTheOrderTheBackwardCompletesIt) {
  for (bool tied : {true, false}) {
    const ParameterTable table(bucket_test_config(tied));
    // One byte: every layer its own bucket. A gigabyte: all layers in one.
    for (int64_t bytes : {int64_t(1), int64_t(30000), int64_t(1) << 30}) {
      SCOPED_TRACE(::testing::Message() << "tied " << tied << ", bucket bytes " << bytes);
      const std::vector<GradientBucket> buckets = plan_gradient_buckets(table, bytes);
      expect_partition(table, buckets);
      ASSERT_FALSE(buckets.empty());
      EXPECT_EQ(buckets.back().ready_after, kRestOfModel);
      for (size_t b = 0; b + 1 < buckets.size(); ++b) {
        EXPECT_GE(buckets[b].ready_after, 0);
        if (b > 0) {
          EXPECT_LT(buckets[b].ready_after, buckets[b - 1].ready_after) << "bucket " << b;
        }
      }
      // A layer's tensors sit in the bucket completed by the lowest layer it holds, which the
      // backward reaches after (or at) them; the tensors outside the layers in the last bucket.
      for (const ParamSpec& s : table.specs()) {
        const size_t b = bucket_of(buckets, s);
        if (s.layer < 0) {
          EXPECT_EQ(b, buckets.size() - 1) << s.name;
        } else {
          EXPECT_LE(buckets[b].ready_after, s.layer) << s.name;
          if (b > 0) {
            EXPECT_GT(buckets[b - 1].ready_after, s.layer) << s.name;
          }
        }
      }
      const size_t expected_buckets = bytes == 1 ? 5 + 1 : bytes == (int64_t(1) << 30) ? 2 : buckets.size();
      EXPECT_EQ(buckets.size(), expected_buckets);
    }
  }
}

// A communicator of rank 0 of 2 that records what is started (and sums nothing).
class RecordingCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::string name() const override { return "recording"; }
  void start_allreduce_sum(std::span<float> data) override { started.push_back(data.data()); }
  void progress() override { ++progress_calls; }
  void wait_all(std::string_view) override { waits.push_back(started.size()); }
  void allreduce_sum(std::span<double>, std::string_view) override {}
  void broadcast(std::span<std::byte>, int, std::string_view) override {}
  void barrier(std::string_view) override {}
  [[noreturn]] void abort(int code) override { std::_Exit(code); }

  std::vector<const float*> started;
  std::vector<size_t> waits;  // started.size() at each wait_all
  int progress_calls = 0;
};

TEST(GradientReducer, StartsEachBucketWhenItsLastLayerIsDoneAndTheRestAtFinish) {
  const MambaConfig c = bucket_test_config(true);
  Parameters grads(c, WeightType::F32);
  RecordingCommunicator comm;
  GradientReducer reducer(comm, grads, 1);  // a bucket per layer
  const std::vector<GradientBucket> buckets = plan_gradient_buckets(grads.table(), 1);
  const auto first_range = [&](size_t b) {
    return grads.region(buckets[b].ranges[0].kind) + buckets[b].ranges[0].first;
  };
  reducer.on_ready(4);
  reducer.on_ready(3);
  ASSERT_GE(comm.started.size(), 2u);
  EXPECT_EQ(comm.started[0], first_range(0));
  const size_t after_two_layers = comm.started.size();
  EXPECT_EQ(comm.progress_calls, 2);
  reducer.finish("the test's step");  // layers 2..0 and the rest, not reported, start here
  ASSERT_EQ(comm.waits.size(), 1u);
  EXPECT_EQ(comm.waits[0], comm.started.size());
  size_t ranges = 0;
  for (const GradientBucket& b : buckets) ranges += b.ranges.size();
  EXPECT_EQ(comm.started.size(), ranges);
  EXPECT_GT(comm.started.size(), after_two_layers);
  // The next step starts from the first bucket again.
  comm.started.clear();
  reducer.on_ready(4);
  ASSERT_FALSE(comm.started.empty());
  EXPECT_EQ(comm.started[0], first_range(0));
  reducer.finish("the next step");
  int64_t elements = 0;
  for (ParamKind k : {ParamKind::Matrix, ParamKind::Vector}) elements += grads.table().region_elements(k);
  EXPECT_EQ(reducer.elements(), elements);
}

TEST(ParametersDigest, ChangesWithAnyValue) {
  const MambaConfig c = bucket_test_config(false);
  Parameters a(c, WeightType::F32), b(c, WeightType::F32);
  a.zero();
  b.zero();
  EXPECT_EQ(parameters_digest(a), parameters_digest(b));
  b.region(ParamKind::Vector)[7] = 1e-30f;
  EXPECT_NE(parameters_digest(a), parameters_digest(b));
  b.region(ParamKind::Vector)[7] = 0;
  b.region(ParamKind::Matrix)[b.table().region_elements(ParamKind::Matrix) - 1] = -0.0f;  // a different bit pattern of zero
  EXPECT_NE(parameters_digest(a), parameters_digest(b));
}

// ---- mpirun ---------------------------------------------------------------------------------------

using testing::CliRun;
using testing::run_program;

// Generous: the ASan build on a loaded 2-core machine.
constexpr double kRunLimitS = 120;

// `mambacpp train ARGS --distributed` as `ranks` processes of mpirun (each one thread), with
// `environment` ("NAME=value") given to every rank. Under ASan the ranks look for leaks only when
// `check_leaks`: leaks inside OpenMPI are suppressed by library (tests/lsan.supp), which only a
// full unwind at each allocation reaches (its components are unloaded before the report), and
// that doubles a rank's time; one leak-checked job covers the code every job runs.
CliRun mpirun_train(int ranks, const std::vector<std::string>& train_args,
                      const std::vector<std::string>& environment = {}, bool check_leaks = false) {
  // --oversubscribe: CI's machine may have fewer free cores than ranks. The shared-memory
  // transport copies through the sender's buffer (no cross-process reads, which containers
  // often forbid).
  std::vector<std::string> args = {"mpirun", "-np", std::to_string(ranks), "--oversubscribe", "--bind-to", "none",
                                   "--mca", "btl_vader_single_copy_mechanism", "none"};
  const char* asan = getenv("ASAN_OPTIONS");
  const char* leaks = check_leaks ? ":fast_unwind_on_malloc=0" : ":detect_leaks=0";
  args.insert(args.end(), {"-x", "ASAN_OPTIONS=" + std::string(asan ? asan : "") + leaks});
  for (const std::string& e : environment) args.insert(args.end(), {"-x", e});
  args.push_back(MAMBACPP_CLI);
  args.insert(args.end(), train_args.begin(), train_args.end());
  args.push_back("--distributed");
  return run_program(args, kRunLimitS);
}

CliRun one_process_train(const std::vector<std::string>& train_args) {
  std::vector<std::string> args = {MAMBACPP_CLI};
  args.insert(args.end(), train_args.begin(), train_args.end());
  return run_program(args, kRunLimitS);
}

// English-like sentences from a fixed vocabulary: enough structure for the loss to fall.
std::string sentences(int count, uint64_t seed) {
  const std::vector<std::string> subjects = {"The cat", "A dog", "My friend", "The old man", "A bird"};
  const std::vector<std::string> verbs = {"sees", "likes", "finds", "remembers", "paints"};
  const std::vector<std::string> objects = {"the sea.", "a red house.", "the moon.", "some bread.", "a long road."};
  Rng rng(seed);
  std::string text;
  for (int i = 0; i < count; ++i)
    text += subjects[rng.below(subjects.size())] + " " + verbs[rng.below(verbs.size())] + " " +
            objects[rng.below(objects.size())] + (i % 7 == 6 ? "\n" : " ");
  return text;
}

// train.tokens, val.tokens and tokenizer.json, as `prepare` writes them (the fixture tokenizer).
void make_data_folder(const fs::path& dir) {
  fs::create_directories(dir);
  const fs::path tokenizer_json = test_data("tokenizer/tokenizer.json");
  const Tokenizer tokenizer = Tokenizer::from_file(tokenizer_json);
  write_token_file(dir / "train.tokens", tokenizer.encode(sentences(400, 1)), tokenizer.vocab_size());
  write_token_file(dir / "val.tokens", tokenizer.encode(sentences(40, 2)), tokenizer.vocab_size());
  fs::copy_file(tokenizer_json, dir / "tokenizer.json");
}

// The same 20-step run everywhere: a global step of --batch 3 x --accum 2 = 6 windows, so two
// ranks train on 3 windows each in one micro-batch where one process takes two micro-batches.
class DistributedTraining : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);  // CI runs as root
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    const std::string suppressions = (fs::path(MAMBACPP_TEST_DATA).parent_path() / "lsan.supp").string();
    setenv("LSAN_OPTIONS", ("suppressions=" + suppressions + ":print_suppressions=0").c_str(), 0);
    dir_ = new TempDir;
    make_data_folder(data());
    const CliRun f = one_process_train(flags(reference()));
    ASSERT_EQ(f.code, 0) << f.err;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  static fs::path data() { return *dir_ / "data"; }
  static fs::path reference() { return *dir_ / "reference"; }
  static std::vector<std::string> flags(const fs::path& run, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"train", "--data", data().string(), "--out", run.string(), "--d-model", "16",
                                     "--n-layer", "2", "--d-state", "4", "--batch", "3", "--accum", "2",
                                     "--seq-len", "16", "--steps", "20", "--warmup", "3", "--lr", "0.03",
                                     "--eval-every", "5", "--eval-tokens", "96", "--threads", "1"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }

  // Every step's train and val loss of `run` within 1e-5 of the one-process run's.
  static void expect_reference_losses(const fs::path& run) {
    const std::vector<MetricsRow> expected = read_metrics(reference()), actual = read_metrics(run);
    ASSERT_EQ(actual.size(), expected.size()) << "metrics.csv rows of " << run;
    double worst = 0;
    int64_t worst_step = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
      ASSERT_EQ(actual[i].step, expected[i].step);
      EXPECT_EQ(actual[i].tokens, expected[i].tokens) << "step " << expected[i].step;
      ASSERT_EQ(actual[i].train_loss.has_value(), expected[i].train_loss.has_value());
      ASSERT_EQ(actual[i].val_loss.has_value(), expected[i].val_loss.has_value()) << "step " << expected[i].step;
      for (auto [a, e] : {std::pair(actual[i].train_loss, expected[i].train_loss),
                          std::pair(actual[i].val_loss, expected[i].val_loss)}) {
        if (!e) continue;
        const double d = std::abs(*a - *e);
        if (d > worst) worst = d, worst_step = expected[i].step;
        EXPECT_LE(d, 1e-5) << "step " << expected[i].step << ": loss " << *a << ", one process " << *e;
      }
    }
    std::printf("  %s: worst loss difference from one process %.3g (step %lld)\n", run.filename().c_str(), worst,
                (long long)worst_step);
  }

  static fs::path latest(const fs::path& run) {
    const std::string name = read_text(run / "checkpoints/latest");
    return run / "checkpoints" / name.substr(0, name.find('\n'));
  }

  static TempDir* dir_;
};

TempDir* DistributedTraining::dir_ = nullptr;

TEST_F(DistributedTraining, TwoRanksMatchOneProcessWithTheSameGlobalBatch) {
  const fs::path run = *dir_ / "two-ranks";
  // Checking every 5 steps that the ranks hold the same parameters and moments: they do.
  const CliRun f = mpirun_train(2, flags(run, {"--dist-check-every", "5"}), {}, /*check_leaks=*/true);
  ASSERT_EQ(f.code, 0) << f.err;
  expect_reference_losses(run);
  // The final weights, which differ by the rounding of summing the gradients in another order
  // (measured: worst 4.8e-7 after 20 steps, mean 1.6e-8), amplified where AdamW divides a
  // near-zero gradient by its own small scale: bounded well above the measurement, far below lr.
  const MambaModel ours = MambaModel::load(latest(run)), theirs = MambaModel::load(latest(reference()));
  double worst = 0, sum = 0;
  int64_t n = 0;
  for (ParamKind kind : {ParamKind::Matrix, ParamKind::Vector}) {
    const float* a = ours.parameters().region(kind);
    const float* b = theirs.parameters().region(kind);
    for (int64_t i = 0; i < ours.parameters().table().region_elements(kind); ++i, ++n) {
      const double d = std::abs(double(a[i]) - double(b[i]));
      worst = std::max(worst, d);
      sum += d;
    }
  }
  std::printf("  final weights: worst difference %.3g, mean %.3g\n", worst, sum / double(n));
  EXPECT_LE(worst, 1e-4);
  EXPECT_LE(sum / double(n), 1e-6);
  // Rank 0 reported the communication figures; only it printed the summary line.
  EXPECT_NE(f.err.find("communication: 2 ranks (MPI)"), std::string::npos) << f.err;
  EXPECT_EQ(std::count(f.out.begin(), f.out.end(), '\n'), 1) << f.out;
  const nlohmann::json figures = nlohmann::json::parse(read_text(run / "distributed.json"));
  EXPECT_EQ(figures.at("ranks"), 2);
  EXPECT_GT(figures.at("allreduce_algbw_GBps").get<double>(), 0);
  EXPECT_GE(figures.at("comm_share").get<double>(), 0);
  EXPECT_LE(figures.at("comm_share").get<double>(), 1);
}

TEST_F(DistributedTraining, WithoutMpirunDistributedIsOneProcess) {
  const fs::path run = *dir_ / "alone";
  std::vector<std::string> args = flags(run);
  args.push_back("--distributed");
  const CliRun f = one_process_train(args);
  ASSERT_EQ(f.code, 0) << f.err;
  const std::vector<MetricsRow> expected = read_metrics(reference()), actual = read_metrics(run);
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i)
    EXPECT_EQ(actual[i].train_loss, expected[i].train_loss) << "step " << expected[i].step;  // the same sums
  EXPECT_NE(f.err.find("communication: 1 rank (single process)"), std::string::npos) << f.err;
}

TEST_F(DistributedTraining, ResumesWithAnotherNumberOfRanks) {
  for (auto [first, second] : {std::pair(2, 1), std::pair(1, 2)}) {
    SCOPED_TRACE(::testing::Message() << first << " rank(s), then " << second);
    const fs::path run = *dir_ / ("resume-" + std::to_string(first) + "-" + std::to_string(second));
    const auto part = [&](int ranks, std::vector<std::string> args) {
      return ranks == 1 ? one_process_train(args) : mpirun_train(ranks, args);
    };
    CliRun f = part(first, flags(run, {"--stop-after", "10"}));
    ASSERT_EQ(f.code, 0) << f.err;
    EXPECT_EQ(read_text(run / "checkpoints/latest"), "step-00000010\n");
    f = part(second, {"train", "--out", run.string(), "--resume", "--threads", "1"});
    ASSERT_EQ(f.code, 0) << f.err;
    expect_reference_losses(run);
  }
}

// Rank 1 fails at the start of step 7 of a run that checkpoints every 5 steps.
void expect_job_ends_with_checkpoint_5(const fs::path& run, const CliRun& f, double timeout_s) {
  EXPECT_NE(f.code, 0) << f.err;
  EXPECT_LT(f.seconds, timeout_s + 20) << "the job did not end soon after the timeout";
  EXPECT_EQ(read_text(run / "checkpoints/latest"), "step-00000005\n");
  const fs::path checkpoint = run / "checkpoints/step-00000005";
  EXPECT_EQ(read_trainer_state(checkpoint).step, 5);
  EXPECT_NO_THROW(MambaModel::load(checkpoint));
}

TEST_F(DistributedTraining, ARankThatHangsEndsTheJobWithinTheTimeout) {
  const fs::path run = *dir_ / "hang";
  const CliRun f = mpirun_train(2, flags(run, {"--save-every", "5", "--dist-timeout", "5"}),
                                  {"MAMBACPP_TEST_RANK_FAULT=1:7:hang"});
  EXPECT_NE(f.err.find("rank 0: no progress from the other ranks for 5 s during the gradient all-reduce of step 7; "
                       "aborting"),
            std::string::npos)
      << f.err;
  EXPECT_GE(f.seconds, 5.0);
  expect_job_ends_with_checkpoint_5(run, f, 5);
}

TEST_F(DistributedTraining, ARankThatDiesEndsTheJob) {
  const fs::path run = *dir_ / "dies";
  const CliRun f = mpirun_train(2, flags(run, {"--save-every", "5", "--dist-timeout", "5"}),
                                  {"MAMBACPP_TEST_RANK_FAULT=1:7:exit"});
  // mpirun sees the rank exit and ends the job, naming it ("Process name: [[job,1],1]" and its
  // exit code), or rank 0 times out.
  const bool mpirun_said = f.err.find("],1]") != std::string::npos && f.err.find("Exit code:    3") != std::string::npos;
  const bool watchdog_said = f.err.find("rank 0: no progress from the other ranks") != std::string::npos;
  EXPECT_TRUE(mpirun_said || watchdog_said) << f.err;
  expect_job_ends_with_checkpoint_5(run, f, 5);
}

TEST_F(DistributedTraining, ARankWhoseParametersDriftEndsTheJobAtTheNextCheck) {
  const fs::path run = *dir_ / "diverges";
  const CliRun f = mpirun_train(2, flags(run, {"--save-every", "5", "--dist-check-every", "4"}),
                                  {"MAMBACPP_TEST_RANK_FAULT=1:7:diverge"});
  EXPECT_EQ(f.code, 1) << f.err;
  EXPECT_NE(f.err.find("error: rank 1: the ranks' states differ after step 8: this rank's parameters ("),
            std::string::npos)
      << f.err;
  EXPECT_EQ(read_text(run / "checkpoints/latest"), "step-00000005\n");
}

TEST_F(DistributedTraining, AnErrorOnTheRanksEndsTheJobWithTheMessage) {
  std::vector<std::string> args = flags(*dir_ / "too-few-windows");
  *(std::find(args.begin(), args.end(), "--batch") + 1) = "1";
  *(std::find(args.begin(), args.end(), "--accum") + 1) = "1";
  const CliRun f = mpirun_train(2, args);  // 1 x 1 windows per step for 2 ranks
  EXPECT_EQ(f.code, 1) << f.err;
  EXPECT_NE(f.err.find("windows per step cannot be shared by 2 ranks"), std::string::npos) << f.err;
}

}  // namespace
}  // namespace mambacpp
