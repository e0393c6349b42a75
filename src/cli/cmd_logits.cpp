// mambacpp logits: the model's logits for every position of one or more equal-length id
// sequences, written as the F32 tensor `logits` [B, n, vocab] of a safetensors file (atomically:
// no file at all after a failure). --step computes them one token at a time through the
// recurrent path instead of the parallel forward.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "infer/generator.h"
#include "io/safetensors.h"

namespace mambacpp::cli {
namespace {

struct LogitsArgs {
  std::string model_dir, ids, ids_file, out, threads, weights;
  bool step = false;
};

// logits [B, n, V] through the recurrent path: step() once per position.
void step_logits(MambaModel& model, const std::vector<int32_t>& tokens, int batch, int64_t length, float* logits) {
  const int64_t vocab = model.config().vocab_size;
  InferenceState state = model.new_state(batch);
  std::vector<int32_t> column(static_cast<size_t>(batch));
  std::vector<float> row(size_t(batch * vocab));
  for (int64_t t = 0; t < length; ++t) {
    for (int b = 0; b < batch; ++b) column[size_t(b)] = tokens[size_t(b * length + t)];
    model.step(column.data(), state, row.data());
    for (int b = 0; b < batch; ++b)
      std::copy_n(row.data() + b * vocab, vocab, logits + (b * length + t) * vocab);
  }
}

void run_logits(const LogitsArgs& a) {
  apply_threads(a.threads);
  check_model_dir(a.model_dir);
  const std::vector<std::vector<int32_t>> sequences = read_id_batch(a.ids, a.ids_file);
  MambaModel model = open_model(a.model_dir, a.weights);
  const int64_t vocab = model.config().vocab_size;
  for (size_t i = 0; i < sequences.size(); ++i)
    check_token_ids(sequences[i], vocab, a.ids_file.empty() ? std::string("--ids") : cat("line ", i + 1, " of ", a.ids_file));

  const int batch = int(sequences.size());
  const int64_t length = int64_t(sequences[0].size());
  std::vector<int32_t> tokens;
  for (const auto& s : sequences) tokens.insert(tokens.end(), s.begin(), s.end());
  Tensor logits = Tensor::zeros(DType::F32, {batch, length, vocab});
  if (a.step) {
    step_logits(model, tokens, batch, length, logits.mutable_data<float>());
  } else {
    InferenceState state = model.new_state(batch);
    model.forward(tokens.data(), batch, length, state, LogitsMode::All, logits.mutable_data<float>());
  }
  write_safetensors(a.out, {{"logits", logits}});
  std::fprintf(stderr, "wrote logits %s to %s\n", shape_str(logits.shape()).c_str(), a.out.c_str());
}

}  // namespace

void register_logits(CLI::App& app) {
  auto a = std::make_shared<LogitsArgs>();
  CLI::App* cmd = app.add_subcommand("logits", "Write a model's logits for given token ids to a safetensors file");
  cmd->footer(
      "Writes the F32 tensor `logits` [B, n, vocab]: B sequences of n ids (one for --ids). The file\n"
      "appears whole or not at all. Exit codes: 0 ok, 1 bad input, 2 usage.");
  add_model_flag(*cmd, a->model_dir);
  add_ids_input(*cmd, a->ids, a->ids_file);
  cmd->add_option("-o,--out", a->out, "Output file (safetensors)")->type_name("FILE")->required();
  cmd->add_flag("--step", a->step, "Compute one token at a time through the recurrent step path");
  add_threads_flag(*cmd, a->threads);
  add_weights_flag(*cmd, a->weights);
  cmd->callback([a] { run_logits(*a); });
}

}  // namespace mambacpp::cli
