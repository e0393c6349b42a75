#include "io/checkpoint.h"

#include <nlohmann/json.hpp>
#include <set>

#include "io/atomic_file.h"
#include "io/json_fields.h"
#include "io/torch_pickle.h"

namespace mambacpp {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// model.safetensors.index.json: {"metadata": {...}, "weight_map": {tensor: shard file}}. Every
// shard is read and validated; the index and the shards must agree tensor for tensor.
TensorMap read_sharded(const fs::path& dir, const fs::path& index_path) {
  const json index = read_json_file(index_path);
  const JsonObject map = JsonObject(index, index_path.string()).object("weight_map");
  std::map<std::string, std::set<std::string>> by_shard;  // shard -> tensors the index puts there
  for (const auto& [tensor, shard] : map.value().items()) {
    const auto file = map.string(tensor);
    if (!file || file->empty() || file->find('/') != std::string::npos || *file == "." || *file == "..")
      map.fail_at(tensor, "must name a shard file in the same folder, found ", json_excerpt(shard));
    by_shard[*file].insert(tensor);
  }
  if (by_shard.empty()) fail(index_path.string(), ": weight_map is empty");

  TensorMap out;
  std::vector<std::pair<fs::path, std::string>> unlisted;  // reported after the missing ones
  for (const auto& [shard, names] : by_shard) {
    const fs::path shard_path = dir / shard;
    if (!is_file(shard_path))
      fail(index_path.string(), ": shard ", shard, " (holding ", *names.begin(), ") is missing: ", shard_path.string());
    SafetensorsFile f = read_safetensors(shard_path);
    for (const std::string& name : names) {
      auto it = f.tensors.find(name);
      if (it == f.tensors.end())
        fail(index_path.string(), ": tensor ", name, " is listed in shard ", shard, " but ", shard_path.string(),
             " does not hold it");
      out.emplace(name, it->second);
    }
    for (const auto& [name, t] : f.tensors)
      if (!names.count(name)) unlisted.emplace_back(shard_path, name);
  }
  if (!unlisted.empty())
    fail(unlisted[0].first.string(), ": holds tensor ", unlisted[0].second, " that ", index_path.filename().string(),
         " does not list for this shard");
  return out;
}

json generation_config(const MambaConfig& c) {
  json j = {{"_from_model_config", true}};
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_id) j["eos_token_id"] = *c.eos_token_id;
  if (c.pad_token_id) j["pad_token_id"] = *c.pad_token_id;
  return j;
}

// "float32" etc.: the torch dtype transformers records for the weights (the embedding's).
std::string torch_dtype_name(const TensorMap& tensors) {
  DType d = DType::F32;
  for (const auto& [name, t] : tensors)
    if (is_float(t.dtype())) {
      d = t.dtype();
      break;
    }
  switch (d) {
    case DType::F16:
      return "float16";
    case DType::BF16:
      return "bfloat16";
    case DType::F64:
      return "float64";
    default:
      return "float32";
  }
}

// An existing destination is replaced only if it looks like something we may replace: an empty
// folder or a checkpoint folder (holding config.json). Anything else is most likely a mistake.
void check_replaceable(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(dir, ec))) return;
  if (!fs::is_directory(fs::symlink_status(dir, ec)))
    fail(dir.string(), ": exists and is not a folder; refusing to replace it");
  if (!fs::is_empty(dir, ec) && !is_file(dir / "config.json"))
    fail(dir.string(), ": exists and is not a checkpoint folder (no config.json); refusing to replace it");
}

}  // namespace

Checkpoint read_checkpoint(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) fail(dir.string(), ": checkpoint folder does not exist");
  if (!fs::is_directory(dir, ec)) fail(dir.string(), ": not a folder (expected a checkpoint folder with config.json)");
  Checkpoint ck;
  ck.dir = dir;
  const fs::path config = dir / "config.json";
  if (!is_file(config)) fail(dir.string(), ": no config.json in the checkpoint folder");
  ck.config = read_config(config);

  const fs::path single = dir / "model.safetensors";
  const fs::path index = dir / "model.safetensors.index.json";
  const fs::path torch_bin = dir / "pytorch_model.bin";
  if (is_file(single)) {
    ck.weights_file = single.string();
    ck.tensors = read_safetensors(single).tensors;
  } else if (is_file(index)) {
    ck.weights_file = index.string();
    ck.tensors = read_sharded(dir, index);
  } else if (is_file(torch_bin)) {
    ck.weights_file = torch_bin.string();
    ck.tensors = read_torch_zip(torch_bin);
  } else {
    fail(dir.string(), ": no weights (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin)");
  }
  if (is_file(dir / "tokenizer.json")) ck.tokenizer = dir / "tokenizer.json";
  return ck;
}

void write_hf_checkpoint(const fs::path& out_dir, const MambaConfig& config, const TensorMap& tensors,
                         const std::optional<fs::path>& tokenizer_json) {
  AtomicDir staging(out_dir);
  check_replaceable(staging.target());
  if (tokenizer_json && !is_file(*tokenizer_json)) fail(tokenizer_json->string(), ": tokenizer file does not exist");

  json cfg = to_hf_json(config);
  cfg["torch_dtype"] = torch_dtype_name(tensors);
  write_file_atomically(staging.path() / "config.json", cfg.dump(2) + "\n");
  write_file_atomically(staging.path() / "generation_config.json", generation_config(config).dump(2) + "\n");
  write_safetensors(staging.path() / "model.safetensors",
                    std::vector<std::pair<std::string, Tensor>>(tensors.begin(), tensors.end()), {{"format", "pt"}});
  if (tokenizer_json) {
    std::error_code ec;
    fs::copy_file(*tokenizer_json, staging.path() / "tokenizer.json", ec);
    if (ec) fail(tokenizer_json->string(), ": cannot copy into the checkpoint: ", ec.message());
  }
  staging.commit();
}

}  // namespace mambacpp
