// mambacpp grad: the command-line form of the gradient check. For a batch of equal-length id
// sequences it writes the mean causal-LM loss (every next-token target of the batch, as
// transformers computes it with labels = input ids) as `loss` F32 [1], and d loss / d parameter as
// `grad.<name>` for every parameter tensor the checkpoint stores, under the checkpoint's own
// spelling (HF or mamba_ssm) and file shape. A tied head has no entry: its gradient is in the
// embedding's.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"

namespace mambacpp::cli {
namespace {

struct GradArgs {
  std::string model_dir, ids, ids_file, out, threads;
};

void run_grad(const GradArgs& a) {
  apply_threads(a.threads);
  check_model_dir(a.model_dir);
  const std::vector<std::vector<int32_t>> sequences = read_id_batch(a.ids, a.ids_file);
  if (sequences[0].size() < 2)
    fail(a.ids_file.empty() ? std::string("--ids") : a.ids_file,
         ": a loss needs at least 2 ids per sequence (one input and its next token), got ", sequences[0].size());
  const Checkpoint checkpoint = read_checkpoint(a.model_dir);
  MambaModel model = MambaModel::from_tensors(checkpoint.config, checkpoint.tensors, checkpoint.weights_file,
                                              LoadOptions{WeightType::F32});

  // Inputs are every position; the target of position t is id t + 1 (none for the last).
  const int batch = int(sequences.size());
  const int64_t length = int64_t(sequences[0].size());
  std::vector<int32_t> tokens, targets;
  for (const auto& s : sequences) {
    tokens.insert(tokens.end(), s.begin(), s.end());
    targets.insert(targets.end(), s.begin() + 1, s.end());
    targets.push_back(-1);
  }
  Parameters grads(model.config(), WeightType::F32);
  const int64_t count = batch * (length - 1);
  const MambaModel::Loss loss =
      model.loss(tokens.data(), targets.data(), batch, length, &grads, float(1.0 / double(count)));

  // Names as the checkpoint spells them (mamba_ssm files use backbone.embedding, ...).
  std::vector<std::pair<std::string, Tensor>> out;
  Tensor loss_tensor = Tensor::zeros(DType::F32, {1});
  loss_tensor.mutable_data<float>()[0] = float(loss.mean());
  out.emplace_back("loss", loss_tensor);
  for (const ParamSpec& s : grads.table().specs()) {
    const bool hf_name = checkpoint.tensors.count(s.name) || s.alt_name.empty();
    out.emplace_back("grad." + (hf_name ? s.name : s.alt_name), grads.export_tensor(s, DType::F32));
  }
  write_safetensors(a.out, out);
  std::fprintf(stderr, "loss %.6f over %lld targets; wrote it and %zu gradients to %s\n", loss.mean(),
               static_cast<long long>(count), out.size() - 1, a.out.c_str());
}

}  // namespace

void register_grad(CLI::App& app) {
  auto a = std::make_shared<GradArgs>();
  CLI::App* cmd = app.add_subcommand("grad", "Write the loss and every parameter's gradient for given token ids");
  cmd->footer(
      "Writes `loss` (F32 [1]: the mean next-token cross-entropy over all B x (n-1) targets, as\n"
      "transformers with labels = input ids) and `grad.<name>` for every parameter tensor stored in the\n"
      "checkpoint, under its own name and shape (a tied lm_head has none: its gradient is part of the\n"
      "embedding's). Computed in fp32. The file appears whole or not at all.\n"
      "Exit codes: 0 ok, 1 bad input, 2 usage.");
  add_model_flag(*cmd, a->model_dir);
  add_ids_input(*cmd, a->ids, a->ids_file);
  cmd->add_option("-o,--out", a->out, "Output file (safetensors)")->type_name("FILE")->required();
  add_threads_flag(*cmd, a->threads);
  cmd->callback([a] { run_grad(*a); });
}

}  // namespace mambacpp::cli
