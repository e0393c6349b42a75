// `train --stateful` (src/train/stateful.h) and the trainer's document batches: the lanes' windows
// on a hand-made stream (circular, positions restarting), two carried windows giving the loss of
// the one window they make, the carried states and cursors through states.safetensors, resume bit
// for bit for --stateful, --pack and --pad runs, and the flags that do not go together.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "io/safetensors.h"
#include "model/mamba_model.h"
#include "model/parameters.h"
#include "test_support.h"
#include "train_test_support.h"
#include "train/document_batches.h"
#include "train/metrics.h"
#include "train/packing.h"
#include "train/stateful.h"
#include "train/token_data.h"
#include "train/trainer.h"

namespace mambacpp {
namespace {

namespace fs = std::filesystem;
using testing::expect_bad_input;
using testing::read_bytes;
using testing::read_text;
using testing::TempDir;
using testing::test_data;

constexpr int32_t kEos = 0;

MambaConfig tiny_config() { return testing::tiny_document_config(kEos); }

// 5 6 7 0 | 8 0 | 9 .. 17 0 | 20 21: 18 ids.
const std::vector<int32_t> kStream = {5, 6, 7, 0, 8, 0, 9, 10, 11, 12, 13, 14, 15, 16, 17, 0, 20, 21};

std::vector<int32_t> row_of(const std::vector<int32_t>& v, int64_t row, int64_t length) {
  return std::vector<int32_t>(v.begin() + row * length, v.begin() + (row + 1) * length);
}

// Two lanes of windows of 4: lane 0 starts at id 0, lane 1 at the first document start at or after
// 18 / 2 = 9, that is 16; lane 1 wraps around the end of the data to its start.
TEST(StatefulRows, LanesWalkTheStreamInConsecutiveWindows) {
  TempDir dir;
  write_token_file(dir / "train.tokens", kStream, 100);
  const TokenFile file = TokenFile::open(dir / "train.tokens");
  const DocumentStream stream(file, kEos);
  StatefulRows rows(stream, tiny_config(), 1, 2, 4);
  RowBatch batch;
  LossOptions options;
  rows.next(0, batch, options);
  EXPECT_EQ(row_of(batch.tokens, 0, 4), (std::vector<int32_t>{5, 6, 7, 0}));
  EXPECT_EQ(row_of(batch.targets, 0, 4), (std::vector<int32_t>{6, 7, 0, -1}));
  EXPECT_EQ(row_of(batch.positions, 0, 4), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(row_of(batch.tokens, 1, 4), (std::vector<int32_t>{20, 21, 5, 6}));
  EXPECT_EQ(row_of(batch.targets, 1, 4), (std::vector<int32_t>{21, -1, 6, 7}));  // no target across the seam
  EXPECT_EQ(row_of(batch.positions, 1, 4), (std::vector<int32_t>{0, 1, 0, 1}));
  EXPECT_EQ(options.positions, batch.positions.data());
  ASSERT_NE(options.initial_state, nullptr);
  ASSERT_NE(options.final_state, nullptr);
  EXPECT_NE(options.initial_state, options.final_state);
  rows.carry(0);
  rows.next(0, batch, options);
  EXPECT_EQ(row_of(batch.tokens, 0, 4), (std::vector<int32_t>{8, 0, 9, 10}));
  EXPECT_EQ(row_of(batch.positions, 0, 4), (std::vector<int32_t>{0, 1, 0, 1}));
  EXPECT_EQ(row_of(batch.tokens, 1, 4), (std::vector<int32_t>{7, 0, 8, 0}));
  EXPECT_EQ(row_of(batch.targets, 1, 4), (std::vector<int32_t>{0, -1, 0, -1}));
  EXPECT_EQ(row_of(batch.positions, 1, 4), (std::vector<int32_t>{2, 3, 0, 1}));
  EXPECT_EQ(rows.cursor(0), 8);
  EXPECT_EQ(rows.cursor(1), 6);
}

// The carried states are exact: a document walked in two windows of 8 (with grads, as the trainer
// runs them; the second starting from the first's final states) gives the loss of the whole
// document run at once, and a document starting inside the second window starts from zero.
TEST(StatefulRows, TwoCarriedWindowsGiveTheLossOfTheWholeWindow) {
  // Document A: 13 ids (crosses the window boundary at 8), then B, of which 3 ids fall in window 2.
  std::vector<int32_t> a, b;
  Rng rng(5);
  for (int i = 0; i < 12; ++i) a.push_back(1 + int32_t(rng.below(99)));
  a.push_back(kEos);
  for (int i = 0; i < 6; ++i) b.push_back(1 + int32_t(rng.below(99)));
  b.push_back(kEos);
  std::vector<int32_t> ids = a;
  ids.insert(ids.end(), b.begin(), b.end());
  TempDir dir;
  write_token_file(dir / "train.tokens", ids, 100);
  const TokenFile file = TokenFile::open(dir / "train.tokens");
  const DocumentStream stream(file, kEos);

  MambaModel model = MambaModel::random(tiny_config(), 11);
  model.set_chunk_length(3);
  model.set_scan_checkpoint_every(3);
  Parameters grads(model.config(), WeightType::F32);
  grads.zero();
  StatefulRows rows(stream, model.config(), 1, 1, 8);
  RowBatch batch;
  double windows = 0;
  int64_t count = 0;
  for (int step = 0; step < 2; ++step) {
    LossOptions options;
    rows.next(0, batch, options);
    const MambaModel::Loss part =
        model.loss(batch.tokens.data(), batch.targets.data(), 1, 8, &grads, 1.0f, options);
    rows.carry(0);
    windows += part.sum;
    count += part.count;
  }
  // Reference without positions or states: A alone (12 targets), then B's first 3 ids predicting
  // the next 3 (window 2's last input predicts B's fourth id).
  auto alone = [&](const std::vector<int32_t>& d, size_t inputs) {
    const std::vector<int32_t> in(d.begin(), d.begin() + ptrdiff_t(inputs)),
        out(d.begin() + 1, d.begin() + ptrdiff_t(inputs) + 1);
    return model.loss(in.data(), out.data(), 1, int64_t(inputs));
  };
  const MambaModel::Loss whole_a = alone(a, a.size() - 1), start_b = alone(b, 3);
  const double expected = whole_a.sum + start_b.sum;
  EXPECT_EQ(count, whole_a.count + start_b.count);
  EXPECT_EQ(count, 15);  // 16 inputs less A's end
  // 15 fp32 per-token losses summed in another chunking: a few ulps each.
  const double tolerance = 1e-6 * std::abs(expected);
  EXPECT_NEAR(windows, expected, tolerance) << "two windows " << windows << ", documents alone " << expected;
  // And the 2W ids as one packed row, forward only.
  RowBatch both;
  both.resize(1, 16);
  stream.fill(0, both.row(0), false);
  LossOptions packed;
  packed.positions = both.positions.data();
  const MambaModel::Loss at_once = model.loss(both.tokens.data(), both.targets.data(), 1, 16, nullptr, 1.0f, packed);
  EXPECT_EQ(at_once.count, count);
  EXPECT_NEAR(windows, at_once.sum, tolerance) << "two windows " << windows << ", one window " << at_once.sum;

  // Window 2 from zero states instead loses A's context (a random tiny model uses little of it, but
  // far more than the tolerance): the check above can fail.
  LossOptions cold;
  cold.positions = batch.positions.data();
  const MambaModel::Loss cold2 = model.loss(batch.tokens.data(), batch.targets.data(), 1, 8, nullptr, 1.0f, cold);
  const MambaModel::Loss first = alone(std::vector<int32_t>(a.begin(), a.begin() + 9), 8);
  EXPECT_GT(std::abs(first.sum + cold2.sum - expected), 10 * tolerance);
}

TEST(StatefulRows, StatesAndCursorsRoundTripThroughTheirTensors) {
  TempDir dir;
  write_token_file(dir / "train.tokens", kStream, 100);
  const TokenFile file = TokenFile::open(dir / "train.tokens");
  const DocumentStream stream(file, kEos);
  MambaModel model = MambaModel::random(tiny_config(), 2);
  StatefulRows rows(stream, model.config(), 2, 2, 4);  // 2 micro-batches of 2 lanes
  RowBatch batch;
  for (int m = 0; m < 2; ++m) {
    LossOptions options;
    rows.next(m, batch, options);
    model.loss(batch.tokens.data(), batch.targets.data(), 2, 4, nullptr, 1.0f, options);
    rows.carry(m);
  }
  const auto tensors = rows.state_tensors();
  write_safetensors(dir / "states.safetensors", tensors);
  StatefulRows restored(stream, model.config(), 2, 2, 4);
  restored.restore(read_safetensors(dir / "states.safetensors"), "states.safetensors");
  const auto again = restored.state_tensors();
  ASSERT_EQ(again.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(again[i].first, tensors[i].first);
    ASSERT_EQ(again[i].second.nbytes(), tensors[i].second.nbytes());
    EXPECT_EQ(std::memcmp(again[i].second.raw(), tensors[i].second.raw(), tensors[i].second.nbytes()), 0)
        << tensors[i].first;
  }
  // The run's final states are not all zero (so the round trip compared something).
  const Tensor& ssm = tensors[2].second;
  double norm = 0;
  for (int64_t i = 0; i < ssm.numel(); ++i) norm += std::abs(ssm.data<float>()[i]);
  EXPECT_GT(norm, 0) << tensors[2].first;

  // A file of another run shape, or a cursor outside the data, is refused naming the tensor.
  StatefulRows other(stream, model.config(), 1, 2, 4);
  expect_bad_input([&] { other.restore(read_safetensors(dir / "states.safetensors"), "states.safetensors"); },
                   {"states.safetensors", "cursor", "[2]"});
  auto bad = tensors;
  bad[0].second.mutable_data<int64_t>()[1] = 18;
  write_safetensors(dir / "bad.safetensors", bad);
  expect_bad_input([&] { restored.restore(read_safetensors(dir / "bad.safetensors"), "bad.safetensors"); },
                   {"bad.safetensors", "cursor 18", "lane 1"});
}

// ---- Runs of the trainer -------------------------------------------------------------------------

// Documents of 3 to 60 ids (a counting pattern, so there is something to learn) ended by
// <|endoftext|> (id 0 of the fixture tokenizer, which gives the model its eos_token_id).
std::vector<int32_t> documents(int count, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> ids;
  for (int d = 0; d < count; ++d) {
    const int64_t length = 2 + int64_t(rng.below(58));
    const int32_t first = 10 + int32_t(rng.below(50));
    for (int64_t i = 0; i < length; ++i) ids.push_back(first + int32_t(i % 7));
    ids.push_back(kEos);
  }
  return ids;
}

class DocumentRunTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    fs::create_directories(data());
    const fs::path tokenizer = test_data("tokenizer/tokenizer.json");
    write_token_file(data() / "train.tokens", documents(60, 1), 2000);
    write_token_file(data() / "val.tokens", documents(6, 2), 2000);
    fs::copy_file(tokenizer, data() / "tokenizer.json");
  }
  static void TearDownTestSuite() { delete dir_; }
  void SetUp() override { set_num_threads(1); }
  static fs::path data() { return dir_->path() / "data"; }
  static fs::path temp(const std::string& name) { return dir_->path() / name; }

  static TrainOptions options(const fs::path& out) {
    TrainOptions o = testing::tiny_options(data(), out);
    o.steps = 12;
    o.warmup = 2;
    o.eval_every = 4;
    o.eval_tokens = 64;
    o.keep = TrainOptions{}.keep;
    return o;
  }

  static TempDir* dir_;
};
TempDir* DocumentRunTest::dir_ = nullptr;

std::vector<MetricsRow> read_metrics(const fs::path& run) {
  const std::string text = read_text(run / "metrics.csv");
  std::vector<MetricsRow> rows;
  for (size_t start = text.find('\n') + 1; start < text.size();) {
    const size_t end = text.find('\n', start);
    const auto row = parse_metrics_row(std::string_view(text).substr(start, end - start));
    EXPECT_TRUE(row) << text.substr(start, end - start);
    if (row) rows.push_back(*row);
    start = end + 1;
  }
  return rows;
}

// 12 steps in one run equal 6 steps, then --resume for 6: the same losses, gradient norms and
// token counts, byte-identical weights, and for --stateful the same carried states and cursors.
TEST_F(DocumentRunTest, ResumeIsBitExact) {
  struct Layout {
    const char* name;
    bool TrainOptions::*flag;
    int64_t accum;
  };
  for (const Layout& l : {Layout{"stateful", &TrainOptions::stateful, 1}, Layout{"stateful", &TrainOptions::stateful, 2},
                          Layout{"pack", &TrainOptions::pack, 1}, Layout{"pad", &TrainOptions::pad, 2}}) {
    SCOPED_TRACE(cat(l.name, ", accum ", l.accum));
    const fs::path whole = temp(cat("whole-", l.name, l.accum)), parts = temp(cat("parts-", l.name, l.accum));
    TrainOptions o = options(whole);
    o.*l.flag = true;
    o.accum = l.accum;
    ASSERT_TRUE(train(o).finished);
    o.out = parts.string();
    o.stop_after = 6;
    EXPECT_EQ(train(o).step, 6);
    TrainOptions again;
    again.out = parts.string();
    again.resume = true;
    EXPECT_TRUE(train(again).finished);

    const std::vector<MetricsRow> a = read_metrics(whole), b = read_metrics(parts);
    ASSERT_EQ(a.size(), b.size());
    ASSERT_EQ(a.size(), 13u);
    for (size_t i = 1; i < a.size(); ++i) {
      EXPECT_EQ(a[i].train_loss, b[i].train_loss) << "step " << i;
      EXPECT_EQ(a[i].grad_norm, b[i].grad_norm) << "step " << i;
      EXPECT_EQ(a[i].tokens, b[i].tokens) << "step " << i;
      EXPECT_TRUE(a[i].train_loss && std::isfinite(*a[i].train_loss)) << "step " << i;
    }
    const fs::path last = "checkpoints/step-00000012";
    EXPECT_EQ(read_bytes(whole / last / "model.safetensors"), read_bytes(parts / last / "model.safetensors"));
    const bool stateful = o.stateful;
    EXPECT_EQ(fs::exists(whole / last / "states.safetensors"), stateful);
    if (stateful) {
      EXPECT_EQ(read_bytes(whole / last / "states.safetensors"), read_bytes(parts / last / "states.safetensors"));
    }
    // The tokens column counts real targets: fewer than batch x seq-len x accum per step (document
    // ends, and padding with --pad), but never none.
    const int64_t slots = 2 * 16 * l.accum;
    EXPECT_LE(a[1].tokens, slots);
    EXPECT_GT(a[1].tokens, 0);
    EXPECT_LT(a.back().tokens, 12 * slots);
    EXPECT_LT(*a.back().train_loss, *a[1].train_loss) << "the loss fell";
  }
}

TEST_F(DocumentRunTest, AStatefulCheckpointWithoutItsStatesIsRefused) {
  const fs::path run = temp("no-states");
  TrainOptions o = options(run);
  o.stateful = true;
  o.steps = 4;
  o.stop_after = 2;
  train(o);
  fs::remove(run / "checkpoints/step-00000002/states.safetensors");
  TrainOptions again;
  again.out = run.string();
  again.resume = true;
  expect_bad_input([&] { train(again); }, {"step-00000002", "states.safetensors", "--stateful"});
}

TEST_F(DocumentRunTest, LayoutFlagsThatDoNotGoTogetherAreUsageErrors) {
  const std::vector<std::pair<bool TrainOptions::*, bool TrainOptions::*>> pairs = {
      {&TrainOptions::pack, &TrainOptions::stateful},
      {&TrainOptions::pack, &TrainOptions::pad},
      {&TrainOptions::pad, &TrainOptions::stateful}};
  for (const auto& [x, y] : pairs) {
    TrainOptions o = options(temp("never"));
    o.*x = true;
    o.*y = true;
    try {
      train(o);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Usage) << e.what();
      EXPECT_NE(std::string(e.what()).find("at most one"), std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(fs::exists(temp("never")));
  const testing::CliRun cli =
      testing::run_cli({"train", "--data", data().string(), "--out", temp("never").string(), "--pack", "--stateful"});
  EXPECT_EQ(cli.code, 2) << cli.err;
  EXPECT_NE(cli.err.find("--stateful"), std::string::npos) << cli.err;
  // A resumed run keeps its layout: --pack given to a --stateful run disagrees.
  const fs::path run = temp("keeps-layout");
  TrainOptions o = options(run);
  o.stateful = true;
  o.steps = 2;
  train(o);
  TrainOptions again;
  again.out = run.string();
  again.resume = true;
  again.pack = true;
  again.given = {"--pack"};
  try {
    train(again);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--pack on differs from the run's off"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mambacpp
