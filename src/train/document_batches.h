// The trainer's batches when they are made of documents (`train --pack`, `--pad`, `--stateful`;
// without any of these the trainer draws random windows itself). Owns the document index of the
// training stream and, with --stateful, the lanes and their carried states (train/stateful.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>

#include "core/rng.h"
#include "model/mamba_model.h"
#include "train/packing.h"
#include "train/stateful.h"
#include "train/token_data.h"

namespace mambacpp {

enum class BatchLayout {
  Windows,   // random windows across documents (the trainer's default; not handled here)
  Packed,    // --pack: rows of documents back to back, positions restarting at each
  Padded,    // --pad: one document per row, padded to the batch's longest
  Stateful,  // --stateful: consecutive windows per row, states carried across steps
};

class DocumentBatches {
 public:
  // `train` must outlive this. `eos` ends documents. Rows of at most `length` inputs, `rows` per
  // micro-batch, `micro_batches` per step.
  DocumentBatches(BatchLayout layout, const TokenFile& train, int32_t eos, const MambaConfig& config, int64_t rows,
                  int64_t length, int64_t micro_batches);

  BatchLayout layout() const { return layout_; }
  // Micro-batch m of the next step (Packed and Padded draw rows with `rng`), and the loss options
  // it needs (positions; carried states). Valid until the next call.
  const RowBatch& next(int64_t m, Rng& rng, LossOptions& options);
  // After micro-batch m's loss (Stateful: its final states are carried into the next step).
  void after_loss(int64_t m);

  // states.safetensors in a checkpoint folder: only Stateful has run state to keep.
  static constexpr const char* kStatesFile = "states.safetensors";
  void write_state(const std::filesystem::path& checkpoint_dir) const;
  // BadInput if a Stateful run's checkpoint lacks the file or it does not fit the run.
  void read_state(const std::filesystem::path& checkpoint_dir);

 private:
  BatchLayout layout_;
  int64_t rows_;
  DocumentStream stream_;
  std::optional<PackedRows> packed_;
  std::optional<PaddedRows> padded_;
  std::optional<StatefulRows> stateful_;
  RowBatch batch_;
};

}  // namespace mambacpp
