// Training checkpoints in RUN/checkpoints/:
//   step-%08d/   config.json, model.safetensors (F32), generation_config.json, tokenizer.json: an
//                HF folder that `generate`, `eval` and transformers load as it is; plus
//                optimizer.safetensors (AdamW moments: exp_avg.<name>, exp_avg_sq.<name>, F32,
//                in the file shapes of model.safetensors) and trainer_state.json (TrainerState).
//   latest       one line naming the newest complete folder ("step-00000010").
// A folder appears whole or not at all (written into a temporary sibling, fsynced, renamed);
// `latest` is replaced atomically after it. So whenever a run dies, `latest` names a complete
// checkpoint (or does not exist yet).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "model/mamba_model.h"
#include "train/optimizer.h"

namespace mambacpp {

// What a run needs besides the weights and the moments to continue exactly.
struct TrainerState {
  int64_t step = 0;         // optimizer steps done (skipped ones included)
  int64_t tokens = 0;       // training tokens seen
  int64_t adamw_steps = 0;  // updates applied (AdamW's bias-correction count)
  std::array<uint64_t, 4> data_rng{};  // the window generator (core/rng.h state)
  int64_t skipped_total = 0, skipped_in_a_row = 0;
  double elapsed_s = 0;  // training time of all invocations so far
  int64_t threads = 0;   // of the invocation that wrote it (bit-exact continuation needs the same)
  nlohmann::json settings = nlohmann::json::object();  // the run's settings by flag (trainer.h)
};

// "step-00000010"
std::string checkpoint_name(int64_t step);

// Writes checkpoints_dir/step-<state.step> (replacing one of that name), then `latest`, then
// removes every other step folder except the newest keep - 1 below it (so a run that went back
// to an earlier checkpoint drops the folders it is redoing). Returns the new folder. On failure
// (a full disk) the earlier checkpoints and `latest` are as they were. `write_more`, if set, adds
// files of its own to the folder while it is staged (--stateful's states.safetensors).
std::filesystem::path save_checkpoint(const std::filesystem::path& checkpoints_dir, const MambaModel& model,
                                      const AdamW& optimizer, const TrainerState& state,
                                      const std::optional<std::filesystem::path>& tokenizer_json, int64_t keep,
                                      const std::function<void(const std::filesystem::path&)>& write_more = {});

// The folder `latest` names, or nullopt when there is no `latest`. BadInput if it does not name
// an existing step folder.
std::optional<std::filesystem::path> find_latest_checkpoint(const std::filesystem::path& checkpoints_dir);

TrainerState read_trainer_state(const std::filesystem::path& checkpoint_dir);
// Both moments from checkpoint_dir/optimizer.safetensors, every tensor checked against the
// optimizer's layout (BadInput naming the file and tensor), and the update count.
void read_optimizer_state(const std::filesystem::path& checkpoint_dir, int64_t adamw_steps, AdamW& optimizer);

// Removes every step folder and `latest` (a fresh run in a folder whose earlier run published no
// checkpoint, so its unpublished step folders belong to no one).
void remove_checkpoints(const std::filesystem::path& checkpoints_dir);

// Removes what a killed writer leaves in `dir`: temporary files and folders (".<name>.tmp-...",
// ".<name>.old-...").
void remove_stale_temporaries(const std::filesystem::path& dir);

}  // namespace mambacpp
