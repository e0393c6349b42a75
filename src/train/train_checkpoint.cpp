#include "train/train_checkpoint.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/json_fields.h"
#include "io/safetensors.h"

namespace mambacpp {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kLatest = "latest";
constexpr const char* kTrainerState = "trainer_state.json";
constexpr const char* kOptimizerState = "optimizer.safetensors";
constexpr const char* kStatePrefix = "step-";
constexpr int kStateFormatVersion = 1;

// The moments' names in optimizer.safetensors, as torch.optim.AdamW's state keys.
struct Moment {
  const char* prefix;
  Parameters& (AdamW::*get)();
  const Parameters& (AdamW::*get_const)() const;
};
const Moment kMoments[] = {{"exp_avg.", &AdamW::first_moment, &AdamW::first_moment},
                           {"exp_avg_sq.", &AdamW::second_moment, &AdamW::second_moment}};

// The step of a "step-%08d" folder name, or nullopt for any other name.
std::optional<int64_t> step_of(const std::string& name) {
  if (name.rfind(kStatePrefix, 0) != 0) return std::nullopt;
  const char* first = name.data() + std::char_traits<char>::length(kStatePrefix);
  const char* last = name.data() + name.size();
  int64_t step = -1;
  auto [end, ec] = std::from_chars(first, last, step);
  if (ec != std::errc() || end != last || step < 0 || last - first < 8) return std::nullopt;
  return step;
}

std::string hex_word(uint64_t w) {
  char text[19];
  std::snprintf(text, sizeof text, "0x%016llx", static_cast<unsigned long long>(w));
  return text;
}

json state_to_json(const TrainerState& s) {
  json rng = json::array();
  for (uint64_t w : s.data_rng) rng.push_back(hex_word(w));
  return json{{"format", "mambacpp-trainer-state"},
              {"version", kStateFormatVersion},
              {"step", s.step},
              {"tokens", s.tokens},
              {"adamw_steps", s.adamw_steps},
              {"data_rng", rng},
              {"skipped_steps_total", s.skipped_total},
              {"skipped_steps_in_a_row", s.skipped_in_a_row},
              {"elapsed_s", s.elapsed_s},
              {"threads", s.threads},
              {"settings", s.settings}};
}

uint64_t parse_hex_word(const JsonObject& o, const json& v) {
  const std::string text = v.is_string() ? v.get<std::string>() : std::string();
  uint64_t w = 0;
  if (text.size() == 18 && text.rfind("0x", 0) == 0) {
    auto [end, ec] = std::from_chars(text.data() + 2, text.data() + text.size(), w, 16);
    if (ec == std::errc() && end == text.data() + text.size()) return w;
  }
  o.fail_at("data_rng", "expected 4 strings \"0x\" + 16 hex digits, found ", json_excerpt(v));
}

void write_trainer_files(const fs::path& dir, const AdamW& optimizer, const TrainerState& state) {
  std::vector<std::pair<std::string, Tensor>> moments;
  for (const Moment& m : kMoments) {
    const Parameters& values = (optimizer.*m.get_const)();
    for (const ParamSpec& s : values.table().specs())
      moments.emplace_back(m.prefix + s.name, values.export_tensor(s, DType::F32));
  }
  write_safetensors(dir / kOptimizerState, moments, {{"format", "mambacpp-adamw"}});
  write_file_atomically(dir / kTrainerState, state_to_json(state).dump(2) + "\n");
}

// Moves a folder out of the way (one rename, atomic) before deleting it, so a run killed
// meanwhile leaves a temporary, not a half-deleted step folder.
void remove_folder(const fs::path& dir) {
  const fs::path trash = unique_sibling(dir, "old");
  std::error_code ec;
  fs::rename(dir, trash, ec);
  if (!ec) fs::remove_all(trash, ec);
}

void prune(const fs::path& checkpoints_dir, int64_t newest, int64_t keep) {
  std::vector<int64_t> older;
  std::vector<fs::path> remove;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(checkpoints_dir, ec)) {
    const std::optional<int64_t> step = step_of(e.path().filename().string());
    if (!step || *step == newest) continue;
    if (*step > newest) remove.push_back(e.path());  // from a future this run is redoing
    else older.push_back(*step);
  }
  std::sort(older.rbegin(), older.rend());
  for (size_t i = size_t(std::max<int64_t>(keep - 1, 0)); i < older.size(); ++i)
    remove.push_back(checkpoints_dir / checkpoint_name(older[i]));
  for (const fs::path& dir : remove) remove_folder(dir);
}

}  // namespace

std::string checkpoint_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(step));
  return name;
}

fs::path save_checkpoint(const fs::path& checkpoints_dir, const MambaModel& model, const AdamW& optimizer,
                         const TrainerState& state, const std::optional<fs::path>& tokenizer_json, int64_t keep,
                         const std::function<void(const fs::path&)>& write_more) {
  const fs::path target = checkpoints_dir / checkpoint_name(state.step);
  AtomicDir staging(target);
  const auto tensors = model.hf_tensors(DType::F32);
  // write_hf_checkpoint stages its own folder and swaps it onto our (empty) one.
  write_hf_checkpoint(staging.path(), model.config(), TensorMap(tensors.begin(), tensors.end()), tokenizer_json);
  write_trainer_files(staging.path(), optimizer, state);
  if (write_more) write_more(staging.path());
  staging.commit();
  write_file_atomically(checkpoints_dir / kLatest, target.filename().string() + "\n");
  prune(checkpoints_dir, state.step, keep);
  return target;
}

std::optional<fs::path> find_latest_checkpoint(const fs::path& checkpoints_dir) {
  const fs::path latest = checkpoints_dir / kLatest;
  std::error_code ec;
  if (!fs::exists(latest, ec)) return std::nullopt;
  constexpr size_t kMaxBytes = 256;
  std::FILE* f = std::fopen(latest.c_str(), "rb");
  if (!f) fail(latest.string(), ": cannot open");
  char text[kMaxBytes + 1];
  const size_t n = std::fread(text, 1, kMaxBytes + 1, f);
  std::fclose(f);
  std::string name(text, std::min(n, kMaxBytes));
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
  if (n > kMaxBytes || !step_of(name))
    fail(latest.string(), ": expected one line naming a checkpoint folder like step-00000010, found \"",
         name.substr(0, 40), "\"");
  const fs::path dir = checkpoints_dir / name;
  if (!fs::is_directory(dir, ec)) fail(latest.string(), " names ", name, ", which is not a folder in ", checkpoints_dir.string());
  return dir;
}

TrainerState read_trainer_state(const fs::path& checkpoint_dir) {
  const fs::path path = checkpoint_dir / kTrainerState;
  const json j = read_json_file(path);
  const JsonObject o(j, path.string());
  constexpr int64_t kMax = INT64_MAX;
  auto required_int = [&](const char* key) {
    const std::optional<int64_t> v = o.integer(key, 0, kMax);
    if (!v) o.fail_at(key, "missing");
    return *v;
  };
  if (o.string("format") != "mambacpp-trainer-state") o.fail_at("format", "expected \"mambacpp-trainer-state\"");
  if (required_int("version") != kStateFormatVersion)
    o.fail_at("version", "this build reads version ", kStateFormatVersion);
  TrainerState s;
  s.step = required_int("step");
  s.tokens = required_int("tokens");
  s.adamw_steps = required_int("adamw_steps");
  s.skipped_total = required_int("skipped_steps_total");
  s.skipped_in_a_row = required_int("skipped_steps_in_a_row");
  s.threads = required_int("threads");
  s.elapsed_s = o.number("elapsed_s").value_or(0.0);
  const json* rng = o.find("data_rng");
  if (!rng || !rng->is_array() || rng->size() != 4)
    o.fail_at("data_rng", "expected 4 strings \"0x\" + 16 hex digits, found ", rng ? json_excerpt(*rng) : "nothing");
  for (size_t i = 0; i < 4; ++i) s.data_rng[i] = parse_hex_word(o, (*rng)[i]);
  s.settings = o.object("settings").value();
  return s;
}

void read_optimizer_state(const fs::path& checkpoint_dir, int64_t adamw_steps, AdamW& optimizer) {
  const fs::path path = checkpoint_dir / kOptimizerState;
  const SafetensorsFile file = read_safetensors(path);
  size_t used = 0;
  for (const Moment& m : kMoments) {
    Parameters& values = (optimizer.*m.get)();
    for (const ParamSpec& s : values.table().specs()) {
      const std::string name = m.prefix + s.name;
      const auto it = file.tensors.find(name);
      if (it == file.tensors.end()) fail(path.string(), ": tensor ", name, " is missing");
      const Tensor& t = it->second;
      if (t.dtype() != DType::F32 || t.shape() != s.file_shape)
        fail(path.string(), ": tensor ", name, " is ", dtype_name(t.dtype()), " ", shape_str(t.shape()),
             ", expected F32 ", shape_str(s.file_shape));
      values.assign(s, DType::F32, t.raw());
      ++used;
    }
  }
  if (used != file.tensors.size())
    fail(path.string(), ": holds ", file.tensors.size(), " tensors, expected ", used,
         " (the moments of this model's parameters)");
  optimizer.set_steps_taken(adamw_steps);
}

void remove_checkpoints(const fs::path& checkpoints_dir) {
  std::error_code ec;
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(checkpoints_dir, ec))
    if (step_of(e.path().filename().string())) found.push_back(e.path());
  for (const fs::path& dir : found) remove_folder(dir);
  fs::remove(checkpoints_dir / kLatest, ec);
}

void remove_stale_temporaries(const fs::path& dir) {
  std::error_code ec;
  std::vector<fs::path> stale;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 1 && name[0] == '.' &&
        (name.find(".tmp-") != std::string::npos || name.find(".old-") != std::string::npos))
      stale.push_back(e.path());
  }
  for (const fs::path& p : stale) fs::remove_all(p, ec);
}

}  // namespace mambacpp
