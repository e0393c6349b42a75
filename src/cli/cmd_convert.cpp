// mambacpp convert: any checkpoint the loader reads (HF safetensors, sharded, mamba_ssm's
// pytorch_model.bin) written as a Hugging Face folder that transformers loads as it is. Names
// are mapped by the model's one parameter table (MambaModel::hf_tensors), so the loader's
// validation applies too.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "io/checkpoint.h"

namespace mambacpp::cli {
namespace {

struct ConvertArgs {
  std::string model_dir, out, dtype;
};

void check_out_dir(const std::string& out) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(out, ec) && !(fs::is_directory(out, ec) && fs::is_empty(out, ec)))
    fail("--out ", out, " already exists and is not an empty folder; give a new folder");
}

void run_convert(const ConvertArgs& a) {
  check_model_dir(a.model_dir);
  check_out_dir(a.out);
  const MambaModel model = open_model(a.model_dir, "");
  const DType dtype = weight_dtype(parse_weight_type("--dtype", a.dtype).value_or(model.weight_type()));
  TensorMap tensors;
  for (auto& [name, tensor] : model.hf_tensors(dtype)) tensors.emplace(name, std::move(tensor));

  std::error_code ec;
  const auto tokenizer = std::filesystem::path(a.model_dir) / "tokenizer.json";
  const bool has_tokenizer = std::filesystem::exists(tokenizer, ec);
  write_hf_checkpoint(a.out, model.config(), tensors, has_tokenizer ? std::optional(tokenizer) : std::nullopt);
  std::fprintf(stderr, "wrote %zu tensors (%s)%s to %s\n", tensors.size(), std::string(dtype_name(dtype)).c_str(),
               has_tokenizer ? " and tokenizer.json" : "", a.out.c_str());
}

}  // namespace

void register_convert(CLI::App& app) {
  auto a = std::make_shared<ConvertArgs>();
  CLI::App* cmd = app.add_subcommand("convert", "Write a checkpoint as a Hugging Face folder (safetensors + config)");
  cmd->footer(
      "Reads any checkpoint folder mambacpp loads and writes config.json, model.safetensors,\n"
      "generation_config.json and, when the source has one, tokenizer.json. The folder appears whole\n"
      "or not at all. Exit codes: 0 ok, 1 bad input, 2 usage.");
  add_model_flag(*cmd, a->model_dir);
  cmd->add_option("-o,--out", a->out, "Output folder (must not exist, or be empty)")->type_name("DIR")->required();
  cmd->add_option("--dtype", a->dtype,
                  "dtype of every tensor written: f32, bf16 or f16 (default: the checkpoint's own matrix dtype)")
      ->type_name("TYPE")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}));
  cmd->callback([a] { run_convert(*a); });
}

}  // namespace mambacpp::cli
