// The training benchmark (train/train_bench.h) and `mambacpp bench --train` on tiny shapes: the
// steps it times really train (the loss starts at ln(vocab), the weights change), its figures are
// plausible, the FLOPs per token match a count by hand, --lengths keeps the tokens per step, and
// bad values are refused naming the flag.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/mamba_model.h"
#include "test_support.h"
#include "train/train_bench.h"

namespace mambacpp {
namespace {

using testing::run_cli;

MambaConfig tiny_shape() {
  MambaConfig c;
  c.vocab_size = 64;
  c.d_model = 32;
  c.n_layer = 2;
  c.d_state = 4;
  c.d_inner = 64;
  c.dt_rank = 2;
  return c;
}

bool same_weights(const MambaModel& a, const MambaModel& b) {
  for (ParamKind kind : {ParamKind::Vector, ParamKind::Matrix}) {
    const size_t n = size_t(a.parameters().table().region_elements(kind));
    if (std::memcmp(a.parameters().region(kind), b.parameters().region(kind), n * sizeof(float)) != 0) return false;
  }
  return true;
}

TEST(TrainBench, TimesStepsThatTrain) {
  MambaModel model = MambaModel::random(tiny_shape(), 0, WeightType::F32);
  TrainBenchOptions o;
  o.batch = 2;
  o.length = 16;
  o.warmup_steps = 1;
  o.steps = 2;
  o.learning_rate = 1e-2;
  const TrainBenchResult r = run_train_bench(model, o);
  ASSERT_EQ(r.step_seconds.size(), 2u);
  for (double s : r.step_seconds) EXPECT_GT(s, 0);
  // Small random weights give near-uniform predictions: the first loss is about ln(vocab).
  EXPECT_NEAR(r.first_loss, std::log(64.0), 0.2);
  EXPECT_TRUE(std::isfinite(r.last_loss));
  EXPECT_FALSE(same_weights(model, MambaModel::random(tiny_shape(), 0, WeightType::F32)));
  EXPECT_EQ(r.activation_bytes, model.training_bytes(2, 16));
  EXPECT_EQ(r.state_bytes, 3 * Parameters(tiny_shape(), WeightType::F32).bytes());
  EXPECT_GT(r.peak_rss_bytes, r.state_bytes);
}

TEST(TrainBench, RejectsBadOptions) {
  MambaModel model = MambaModel::random(tiny_shape(), 0, WeightType::F32);
  TrainBenchOptions o;
  o.batch = 0;
  testing::expect_bad_input([&] { run_train_bench(model, o); }, {"batch", "0"});
  o = {};
  o.length = 0;
  testing::expect_bad_input([&] { run_train_bench(model, o); }, {"length", "0"});
  o = {};
  o.steps = 0;
  testing::expect_bad_input([&] { run_train_bench(model, o); }, {"steps"});
}

// `bench --train` on a tiny shape, with flags replaced or added by `changes` (flag, value; an
// empty value: a flag without one).
std::vector<std::string> tiny_train(const std::vector<std::pair<std::string, std::string>>& changes = {}) {
  std::vector<std::pair<std::string, std::string>> flags = {
      {"--d-model", "32"}, {"--n-layer", "1"}, {"--vocab", "64"}, {"--d-state", "4"},
      {"-b", "2"},         {"--seq-len", "32"}, {"--steps", "1"},  {"-t", "1"}};
  for (const auto& change : changes) {
    auto same = std::find_if(flags.begin(), flags.end(), [&](const auto& f) { return f.first == change.first; });
    if (same != flags.end()) same->second = change.second;
    else flags.push_back(change);
  }
  std::vector<std::string> args = {"bench", "--train"};
  for (const auto& [flag, value] : flags) {
    args.push_back(flag);
    if (!value.empty()) args.push_back(value);
  }
  return args;
}

TEST(BenchTrainCommand, JsonWithLengthsKeepsTokensPerStep) {
  const auto r = run_cli(tiny_train({{"--lengths", "16,64"}, {"--json", ""}}));
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["runs"].size(), 2u);
  EXPECT_EQ(j["runs"][0]["batch"], 4);  // 2 x 32 tokens per step
  EXPECT_EQ(j["runs"][0]["seq_len"], 16);
  EXPECT_EQ(j["runs"][1]["batch"], 1);
  EXPECT_EQ(j["runs"][1]["seq_len"], 64);
  for (const auto& run : j["runs"]) {
    EXPECT_GT(run["tok_s"].get<double>(), 0);
    EXPECT_GT(run["mfu"].get<double>(), 0);
    EXPECT_GT(run["peak_rss_mib"].get<double>(), 0);
  }
  EXPECT_GE(j["tok_s_max_over_min"].get<double>(), 1.0);
  // By hand, d_model 32, d_inner 64, dt_rank 2, d_state 4, vocab 64, one layer: in_proj 32 x 128,
  // x_proj 64 x 10, dt_proj 2 x 64, out_proj 64 x 32, lm_head 64 x 32 = 8960 weights used in
  // products; training does 6 FLOPs per weight per token.
  EXPECT_DOUBLE_EQ(j["flops_per_token"].get<double>(), 6.0 * 8960);
  EXPECT_NE(j["command"].get<std::string>().find("--lengths 16,64"), std::string::npos);
}

TEST(BenchTrainCommand, TableNamesTheRunAndItsFigures) {
  const auto r = run_cli(tiny_train());
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* part : {"train 2x32", "tokens/s", "MFU", "peak RSS", "MFLOP per token", "sgemm", "threads: 1"})
    EXPECT_NE(r.out.find(part), std::string::npos) << part << " missing from\n" << r.out;
}

TEST(BenchTrainCommand, RefusesBadValues) {
  auto expect_error = [](const std::vector<std::string>& args, int code, const std::string& mention) {
    const auto r = run_cli(args);
    EXPECT_EQ(r.code, code) << r.err;
    EXPECT_NE(r.err.find(mention), std::string::npos) << "stderr \"" << r.err << "\" does not mention " << mention;
  };
  expect_error(tiny_train({{"--lengths", "48"}}), 1, "--lengths 48");  // 64 tokens per step
  expect_error(tiny_train({{"--lengths", "16,x"}}), 2, "--lengths");
  expect_error(tiny_train({{"--d-model", "0"}}), 1, "--d-model");
  expect_error(tiny_train({{"--steps", "0"}}), 1, "--steps");
  expect_error(tiny_train({{"--shape", "130m"}}), 2, "--train");
}

}  // namespace
}  // namespace mambacpp
