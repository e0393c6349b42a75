// Validation loss over fixed, deterministic windows of a token file (the trainer's val loss and
// `mambacpp eval` use the same windows, so their numbers agree).
#pragma once

#include <cstdint>

#include "model/mamba_model.h"
#include "train/token_data.h"

namespace mambacpp {

// The mean next-token loss over the first `max_targets` targets of `file` (all of them when 0 or
// more than it holds): consecutive windows of seq_len inputs (window i: ids [i L, i L + L), each
// predicting the next id), `batch` windows per forward pass, then one shorter window for the
// remainder. Forward only. BadInput if the file holds fewer than 2 ids or an id the model's
// vocabulary lacks.
MambaModel::Loss evaluate_loss(MambaModel& model, const TokenFile& file, int batch, int64_t seq_len,
                               int64_t max_targets);

}  // namespace mambacpp
