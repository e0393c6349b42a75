// The load test's short form (bench/serve_load.sh runs the long one): 8 streaming clients for 3 s
// against `mambacpp serve` on the tiny fixture model. Every stream must answer 200, end with
// [DONE] and carry exactly the ids of its solo reference (same prompt and seed, temperature 0.8),
// so a lost, truncated or mixed-up stream, or a batch-dependent result, fails the test. A second
// case checks that the checker itself notices wrong ids.
#include <gtest/gtest.h>

#include <iostream>
#include <string>
#include <vector>

#include "serve_load_client.h"
#include "serve_test_process.h"
#include "test_support.h"

namespace mambacpp::testing {
namespace {

class ServeLoadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    server_ = new ServeProcess(tiny_model_with_tokenizer(*dir_), dir_->path(), {"--max-batch", "8"});
  }
  static void TearDownTestSuite() {
    delete server_;
    delete dir_;
  }
  static bench::LoadOptions options(int clients, double seconds) {
    bench::LoadOptions o;
    o.port = server_->port();
    o.clients = clients;
    o.seconds = seconds;
    o.max_tokens = 16;
    o.references = 4;
    o.prompts = {"Hello, is the", "he is not a man", "is it on the", "as it is"};  // ids < 512 (the tiny vocab)
    o.server_pid = server_->pid();
    return o;
  }
  static TempDir* dir_;
  static ServeProcess* server_;
};

TempDir* ServeLoadTest::dir_ = nullptr;
ServeProcess* ServeLoadTest::server_ = nullptr;

TEST_F(ServeLoadTest, EightStreamingClientsGetTheirOwnTokens) {
  const bench::LoadOptions o = options(8, 3);
  const std::vector<bench::Reference> references = bench::fetch_references(o);
  ASSERT_EQ(references.size(), 4u);
  for (const auto& r : references) EXPECT_EQ(r.tokens.size(), 16u) << "reference for \"" << r.prompt << "\"";
  // Different seeds must give different samples, or a mix-up between streams could go unnoticed.
  EXPECT_NE(references[0].tokens, references[1].tokens);

  const bench::LoadResult result = bench::run_load(o, references);
  std::string problems;
  for (const auto& p : result.problems) problems += "\n  " + p;
  EXPECT_EQ(result.errors, 0) << bench::summary(result) << problems << "\nserver log:\n" << server_->log();
  EXPECT_EQ(result.mismatches, 0) << bench::summary(result) << problems;
  EXPECT_GE(result.requests, 8) << bench::summary(result);
  EXPECT_GT(result.tokens, 0);
  EXPECT_EQ(result.time_to_first_token.size(), size_t(result.requests));
  EXPECT_FALSE(result.rss.empty()) << "the server's VmRSS was never read";
  std::cout << bench::summary(result) << "\n";
}

TEST_F(ServeLoadTest, WrongReferenceIdsAreReportedAsMismatches) {
  const bench::LoadOptions o = options(2, 0.5);
  std::vector<bench::Reference> references = bench::fetch_references(o);
  for (auto& r : references) r.tokens.back() = r.tokens.back() == 1 ? 2 : 1;  // one wrong id each
  const bench::LoadResult result = bench::run_load(o, references);
  EXPECT_EQ(result.errors, 0) << bench::summary(result);
  EXPECT_GT(result.requests, 0);
  EXPECT_EQ(result.mismatches, result.requests) << bench::summary(result);
  ASSERT_FALSE(result.problems.empty());
  EXPECT_NE(result.problems[0].find("first difference at id 15"), std::string::npos) << result.problems[0];
}

TEST(ServeLoadPercentile, NearestRank) {
  EXPECT_EQ(bench::percentile({}, 0.5), 0);
  EXPECT_EQ(bench::percentile({3, 1, 2}, 0.5), 2);
  EXPECT_EQ(bench::percentile({1, 2, 3, 4}, 0.5), 2);
  std::vector<double> hundred;
  for (int i = 1; i <= 100; ++i) hundred.push_back(i);
  EXPECT_EQ(bench::percentile(hundred, 0.99), 99);
  EXPECT_EQ(bench::percentile(hundred, 1.0), 100);
}

}  // namespace
}  // namespace mambacpp::testing
