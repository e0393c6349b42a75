// Helpers the trainer's test programs share: reading a run's metrics.csv back, and the tiny model
// shape whose documents end with a given end-of-text id.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "io/config.h"
#include "test_support.h"
#include "train/metrics.h"
#include "train/trainer.h"

namespace mambacpp::testing {

// Every row of RUN/metrics.csv after the header; a malformed line fails the test.
inline std::vector<MetricsRow> read_metrics(const std::filesystem::path& run) {
  const std::string text = read_text(run / "metrics.csv");
  std::vector<MetricsRow> rows;
  size_t start = text.find('\n') + 1;
  while (start < text.size()) {
    const size_t end = text.find('\n', start);
    const auto row = parse_metrics_row(std::string_view(text).substr(start, end - start));
    EXPECT_TRUE(row) << "malformed metrics.csv line: " << text.substr(start, end - start);
    if (row) rows.push_back(*row);
    start = end + 1;
  }
  return rows;
}

// A run of a tiny model (d_model 16, 2 layers, d_state 4) on 2 x 16-token windows: 20 steps,
// validation every 5, no periodic checkpoints.
inline TrainOptions tiny_options(const std::filesystem::path& data, const std::filesystem::path& out) {
  TrainOptions o;
  o.data = data.string();
  o.out = out.string();
  o.d_model = 16;
  o.n_layer = 2;
  o.d_state = 4;
  o.batch = 2;
  o.seq_len = 16;
  o.steps = 20;
  o.warmup = 3;
  o.lr = 0.03;
  o.eval_every = 5;
  o.eval_tokens = 96;
  o.save_every = 0;
  o.keep = 2;
  return o;
}

// d_model 16, 2 layers, d_state 4, vocabulary 100: fast enough for many training steps in a test.
inline MambaConfig tiny_document_config(int32_t eos_id) {
  MambaConfig c;
  c.vocab_size = 100;
  c.d_model = 16;
  c.n_layer = 2;
  c.d_state = 4;
  c.d_inner = 32;
  c.dt_rank = 1;
  c.eos_token_id = eos_id;
  return c;
}

}  // namespace mambacpp::testing
