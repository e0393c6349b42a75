// `train --stateful`: rows that walk the training stream in consecutive windows, carrying the
// model's recurrent states from one step to the next (truncated back-propagation through time).
//
// The batch's rows of every micro-batch are lanes: lane k starts at the first document start at
// or after k x size / lanes and reads the stream circularly (after the last id, index 0, a
// document start). Each step a lane's row holds its next `length` inputs; the row starts from the
// lane's final states of the previous step, detached (no gradient flows back into the earlier
// window). A document ending inside a window needs no special case: the next one starts at
// position 0, where the model restarts the conv and the scan from zero (LossOptions::positions).
// The cursors and the carried states are the run's state besides weights and moments; checkpoints
// keep them in states.safetensors (state_tensors / restore), so a resumed run continues exactly.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"
#include "model/mamba_model.h"
#include "train/packing.h"

namespace mambacpp {

class StatefulRows {
 public:
  // `micro_batches` x `rows` lanes; row b of micro-batch m is lane m x rows + b.
  StatefulRows(const DocumentStream& stream, const MambaConfig& config, int64_t micro_batches, int64_t rows,
               int64_t length);

  int64_t lanes() const { return int64_t(cursors_.size()); }
  int64_t cursor(int64_t lane) const { return cursors_[size_t(lane)]; }

  // Fills `batch` with micro-batch m's next windows (moving the cursors on) and points `options`
  // at the carried states (initial_state) and a scratch state (final_state).
  void next(int64_t m, RowBatch& batch, LossOptions& options);
  // After micro-batch m's loss: its final states become its carried states.
  void carry(int64_t m);

  // "cursor" I64 [lanes], "conv.<layer>" F32 [lanes, E, W-1], "ssm.<layer>" F32 [lanes, E, N].
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // The same tensors, each checked by name, dtype and shape (BadInput naming `source` and the tensor).
  void restore(const SafetensorsFile& file, const std::string& source);

 private:
  const DocumentStream* stream_;
  int64_t rows_, length_;
  std::vector<int64_t> cursors_;
  std::vector<InferenceState> carried_;  // one per micro-batch
  InferenceState scratch_;               // the final states of the micro-batch just run
  int64_t n_layer_, conv_per_lane_, ssm_per_lane_;  // floats per lane and layer
};

}  // namespace mambacpp
