// mambacpp info: what a checkpoint folder holds and what running it costs: config, parameter
// count, dtypes in the file, memory for the weights (f32 and bf16) and the recurrent state.
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "io/checkpoint.h"

namespace mambacpp::cli {
namespace {

std::string human_bytes(double bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  char text[64];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.2f %s", bytes, kUnits[unit]);
  return text;
}

std::string yes_no(bool b) { return b ? "yes" : "no"; }

std::string optional_id(const std::optional<int64_t>& id) { return id ? std::to_string(*id) : "-"; }

// "F32 x 24 (1.2 MiB), BF16 x 2 (3.0 KiB)"
std::string dtype_summary(const TensorMap& tensors) {
  std::map<std::string, std::pair<int, size_t>> by_dtype;
  for (const auto& [name, t] : tensors) {
    auto& [count, bytes] = by_dtype[std::string(dtype_name(t.dtype()))];
    ++count;
    bytes += t.nbytes();
  }
  std::string out;
  for (const auto& [dtype, entry] : by_dtype)
    out += cat(out.empty() ? "" : ", ", dtype, " x ", entry.first, " (", human_bytes(double(entry.second)), ")");
  return out;
}

void print_row(const char* key, const std::string& value) { std::printf("%-22s %s\n", key, value.c_str()); }

void run_info(const std::string& model_dir) {
  check_model_dir(model_dir);
  const Checkpoint ckpt = read_checkpoint(model_dir);
  const MambaConfig& c = ckpt.config;
  const ParameterTable table(c);
  int64_t matrix_elements = 0, vector_elements = 0;
  for (const ParamSpec& s : table.specs()) (s.kind == ParamKind::Matrix ? matrix_elements : vector_elements) += s.numel();
  const InferenceState state(c, 1);

  print_row("model", model_dir);
  print_row("weights file", ckpt.weights_file);
  print_row("config", cat(c.dialect == ConfigDialect::HuggingFace ? "Hugging Face" : "mamba_ssm", ", model_type ",
                          c.model_type));
  print_row("vocab_size", std::to_string(c.vocab_size));
  print_row("d_model", std::to_string(c.d_model));
  print_row("n_layer", std::to_string(c.n_layer));
  print_row("d_inner", std::to_string(c.d_inner));
  print_row("d_state", std::to_string(c.d_state));
  print_row("d_conv", std::to_string(c.d_conv));
  print_row("dt_rank", std::to_string(c.dt_rank));
  print_row("in/out proj bias", yes_no(c.use_bias));
  print_row("conv bias", yes_no(c.use_conv_bias));
  print_row("norm epsilon", cat(c.norm_eps));
  if (c.falcon()) print_row("mixer rms epsilon", cat(c.mixer_rms_eps));
  print_row("tied lm_head", yes_no(c.tie_embeddings));
  print_row("bos / eos / pad id", cat(optional_id(c.bos_token_id), " / ", optional_id(c.eos_token_id), " / ",
                                      optional_id(c.pad_token_id)));
  char millions[32];
  std::snprintf(millions, sizeof millions, "%.2f M", double(table.parameter_count()) / 1e6);
  print_row("parameters", cat(table.parameter_count(), " (", millions, ")"));
  print_row("tensors in file", cat(ckpt.tensors.size(), ": ", dtype_summary(ckpt.tensors)));
  print_row("weights memory f32", human_bytes(4.0 * double(matrix_elements + vector_elements)));
  print_row("weights memory bf16", cat(human_bytes(2.0 * double(matrix_elements) + 4.0 * double(vector_elements)),
                                       " (matrices bf16, vectors f32)"));
  print_row("state per sequence", cat(human_bytes(double(state.bytes())), " (conv + ssm, all layers, f32)"));
  print_row("tokenizer", ckpt.tokenizer ? ckpt.tokenizer->string() : "none (use --tokenizer FILE or --ids)");
}

}  // namespace

void register_info(CLI::App& app) {
  auto model_dir = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("info", "Describe a checkpoint: config, parameters, dtypes, memory needed");
  cmd->footer("Exit codes: 0 ok, 1 bad input (missing or malformed checkpoint), 2 usage.");
  add_model_flag(*cmd, *model_dir);
  cmd->callback([model_dir] { run_info(*model_dir); });
}

}  // namespace mambacpp::cli
