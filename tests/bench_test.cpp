// `mambacpp bench` and what it is built on: the GEMM FLOP count of a forward (checked against a
// count done by hand for the mamba-130m shape), the repetition statistics, the roofline
// measurements, the command's JSON output on the tiny fixture, and its flag validation.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/threads.h"
#include "infer/bench_model.h"
#include "infer/roofline.h"
#include "test_support.h"

namespace mambacpp {
namespace {

using testing::run_cli;

TEST(GemmFlops, Mamba130mByHand) {
  // Per layer: in_proj 768 x 3072 = 2,359,296; x_proj 1536 x (48 + 32) = 122,880;
  // dt_proj 48 x 1536 = 73,728; out_proj 1536 x 768 = 1,179,648; sum 3,735,552.
  // x 24 layers x 2 FLOPs = 179,306,496 per token; lm_head 2 x 768 x 50280 = 77,230,080.
  const MambaConfig c = published_shape("130m");
  EXPECT_DOUBLE_EQ(gemm_flops(c, 1, 0), 179'306'496.0);
  EXPECT_DOUBLE_EQ(gemm_flops(c, 0, 1), 77'230'080.0);
  EXPECT_DOUBLE_EQ(gemm_flops(c, 512, 1), 512 * 179'306'496.0 + 77'230'080.0);
}

TEST(RateStats, MeanAndSampleStddev) {
  const RateStats s = rate_stats({1.0, 2.0, 4.0}, 8.0);  // 8, 4 and 2 tokens/s
  ASSERT_EQ(s.samples.size(), 3u);
  EXPECT_DOUBLE_EQ(s.samples[0], 8.0);
  EXPECT_DOUBLE_EQ(s.samples[2], 2.0);
  EXPECT_DOUBLE_EQ(s.mean, 14.0 / 3.0);
  EXPECT_NEAR(s.stddev, std::sqrt(28.0 / 3.0), 1e-12);  // squares 100/9 + 4/9 + 64/9, over n-1 = 2
  EXPECT_DOUBLE_EQ(s.mean_seconds, 7.0 / 3.0);
  EXPECT_EQ(rate_stats({0.5}, 1.0).stddev, 0.0);
}

TEST(Roofline, MeasuresPlausibleFigures) {
  set_num_threads(1);
  const BandwidthResult bw = measure_read_bandwidth(size_t(16) << 20, 2);
  EXPECT_EQ(bw.buffer_bytes, size_t(16) << 20);
  EXPECT_GT(bw.gb_per_s, 0.1);  // even a sanitized debug build streams faster than this
  EXPECT_LT(bw.gb_per_s, 10000.0);
  const SgemmResult gemm = measure_sgemm_peak(256, 0.05);
  EXPECT_GE(gemm.calls, 2);
  EXPECT_GT(gemm.gflop_per_s, 0.1);
  EXPECT_LT(gemm.gflop_per_s, 100000.0);
}

const std::string kTinyModel = testing::test_data("hf-tiny-mamba").string();

TEST(BenchCommand, JsonOnTinyModel) {
  const auto r = run_cli({"bench", "--model", kTinyModel, "-p", "16", "-n", "8", "-r", "2", "-t", "1", "-b", "2",
                           "--context", "5", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  for (const char* key : {"prefill_tok_s", "decode_tok_s", "peak_rss_mib", "prefill_peak_share",
                          "decode_roofline_share", "read_bandwidth_gb_s", "sgemm_gflop_s"}) {
    ASSERT_TRUE(j.contains(key) && j[key].is_number()) << key << " in " << r.out;
    EXPECT_GT(j[key].get<double>(), 0) << key;
  }
  EXPECT_EQ(j["batch"], 2);
  EXPECT_EQ(j["threads"], 1);
  EXPECT_EQ(j["context"], 5);
  EXPECT_EQ(j["weights"], "f32");
  EXPECT_EQ(j["prefill_samples_tok_s"].size(), 2u);
  // GEMM work of one prefill: 2 sequences x (16 positions of 4 matrices + lm_head once).
  // Tiny shape: in_proj 64 x 256, x_proj 128 x (4 + 32), dt_proj 4 x 128, out_proj 128 x 64 per layer.
  const double per_token = 2.0 * 2 * (64 * 256 + 128 * 36 + 4 * 128 + 128 * 64);
  EXPECT_NEAR(j["prefill_gemm_gflop"].get<double>(), 2 * (16 * per_token + 2.0 * 64 * 512) / 1e9, 1e-15);
}

TEST(BenchCommand, TableNamesTestsAndMachine) {
  const auto r = run_cli({"bench", "--model", kTinyModel, "-p", "8", "-n", "4", "-r", "1", "-t", "1", "--weights", "bf16"});
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* text : {"| pp8 ", "| tg4 ", "weights bf16", "kernels: ", "threads: 1", "peak RSS:", "GB/s",
                           "command: mambacpp bench --model"})
    EXPECT_NE(r.out.find(text), std::string::npos) << "no '" << text << "' in:\n" << r.out;
}

// Values that parse but are out of range: exit 1, one line naming the flag or value, no output.
TEST(BenchCommand, RejectsBadValues) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<std::string> model = {"bench", "--model", kTinyModel};
  const auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), model.begin(), model.end());
    return extra;
  };
  for (const Case& c : std::vector<Case>{{with({"-p", "-1"}), "-p"},
                                         {with({"-n", "-5"}), "-n"},
                                         {with({"-t", "0"}), "-t"},
                                         {with({"-b", "0"}), "-b"},
                                         {with({"-r", "0"}), "-r"},
                                         {with({"--context", "-1"}), "--context"},
                                         {with({"-p", "0", "-n", "0"}), "nothing to measure"},
                                         {{"bench", "--shape", "7b"}, "7b"},
                                         {{"bench", "--model", "/no/such/folder"}, "/no/such/folder"}}) {
    const auto r = run_cli(c.args);
    const std::string shown = ::testing::PrintToString(c.args);
    EXPECT_EQ(r.code, 1) << shown << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << shown << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << shown << ": " << r.out;
  }
}

// Flags that do not parse, or a model source missing or given twice: exit 2.
TEST(BenchCommand, UsageErrors) {
  EXPECT_EQ(run_cli({"bench"}).code, 2);
  EXPECT_EQ(run_cli({"bench", "--shape", "130m", "--model", kTinyModel}).code, 2);
  EXPECT_EQ(run_cli({"bench", "--model", kTinyModel, "--bogus"}).code, 2);
  EXPECT_EQ(run_cli({"bench", "--model", kTinyModel, "-p", "12x"}).code, 2);
  EXPECT_EQ(run_cli({"bench", "--model", kTinyModel, "--weights", "f8"}).code, 2);
}

}  // namespace
}  // namespace mambacpp
