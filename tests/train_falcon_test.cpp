// Training a Falcon-Mamba model (issue 7, part 4): a run started from the hf-tiny-falcon-mamba
// fixture trains (its validation loss moves), saves checkpoints that are still falcon_mamba
// (config.json's model_type, architectures and mixer_rms_eps, loaded back as Falcon-Mamba), and a
// checkpoint reloads to the same model: a second run started from it measures at step 0 exactly
// the validation loss the first run measured with its weights in memory.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "model/mamba_model.h"
#include "test_support.h"
#include "train/metrics.h"
#include "train/token_data.h"
#include "train/trainer.h"

namespace mambacpp {
namespace {

using namespace testing;
namespace fs = std::filesystem;

// train.tokens and val.tokens of ids below `vocab`, with a repeating pattern worth learning.
void make_data(const fs::path& dir, int64_t vocab) {
  fs::create_directories(dir);
  Rng rng(17);
  for (const auto& [name, count] : {std::pair{"train.tokens", 3000}, std::pair{"val.tokens", 400}}) {
    std::vector<int32_t> ids;
    for (int i = 0; i < count; ++i) ids.push_back(i % 5 == 4 ? int32_t(rng.below(uint64_t(vocab))) : int32_t(i % 5 + 7));
    write_token_file(dir / name, ids, vocab);
  }
}

double last_val_loss(const fs::path& run) {
  const std::string text = read_text(run / "metrics.csv");
  std::optional<double> last;
  size_t start = text.find('\n') + 1;
  while (start < text.size()) {
    const size_t end = text.find('\n', start);
    const auto row = parse_metrics_row(std::string_view(text).substr(start, end - start));
    if (row && row->val_loss) last = row->val_loss;
    start = end + 1;
  }
  EXPECT_TRUE(last.has_value()) << "no validation loss in " << run / "metrics.csv";
  return last.value_or(0.0);
}

double first_val_loss(const fs::path& run) {
  const std::string text = read_text(run / "metrics.csv");
  const size_t start = text.find('\n') + 1;
  const auto row = parse_metrics_row(std::string_view(text).substr(start, text.find('\n', start) - start));
  EXPECT_TRUE(row && row->val_loss) << "no step-0 validation loss in " << run / "metrics.csv";
  return row && row->val_loss ? *row->val_loss : 0.0;
}

TrainOptions falcon_options(const fs::path& data, const fs::path& out, const std::string& init_from, int64_t steps) {
  TrainOptions o;
  o.data = data.string();
  o.out = out.string();
  o.init_from = init_from;
  o.batch = 2;
  o.seq_len = 16;
  o.steps = steps;
  o.warmup = 1;
  o.lr = 0.01;
  o.eval_every = steps;
  o.eval_tokens = 64;
  o.save_every = steps;
  o.keep = 1;
  o.threads = 1;
  return o;
}

TEST(TrainFalconMamba, TrainsAndSavesFalconCheckpointsThatReloadToTheSameModel) {
  TempDir tmp;
  const fs::path fixture = test_data("hf-tiny-falcon-mamba");
  const MambaModel original = MambaModel::load(fixture);
  ASSERT_TRUE(original.config().falcon());
  make_data(tmp / "data", original.config().vocab_size);

  train(falcon_options(tmp / "data", tmp / "first", fixture.string(), 4));
  const double before = first_val_loss(tmp / "first"), after = last_val_loss(tmp / "first");
  EXPECT_LT(after, before) << "four steps on a repeating pattern did not lower the validation loss";

  const fs::path ckpt = tmp / "first" / "checkpoints" / "step-00000004";
  const nlohmann::json saved = nlohmann::json::parse(read_text(ckpt / "config.json"));
  const nlohmann::json theirs = nlohmann::json::parse(read_text(fixture / "config.json"));
  EXPECT_EQ(saved.at("model_type"), "falcon_mamba");
  EXPECT_EQ(saved.at("architectures"), theirs.at("architectures"));
  EXPECT_EQ(saved.at("mixer_rms_eps"), theirs.at("mixer_rms_eps"));
  const MambaModel reloaded = MambaModel::load(ckpt);
  EXPECT_TRUE(reloaded.config().falcon());

  // The checkpoint is the trained model: a run from it measures the same loss at step 0.
  train(falcon_options(tmp / "data", tmp / "second", ckpt.string(), 1));
  EXPECT_EQ(first_val_loss(tmp / "second"), after);
}

}  // namespace
}  // namespace mambacpp
