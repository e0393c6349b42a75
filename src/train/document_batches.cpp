#include "train/document_batches.h"

#include "core/error.h"
#include "io/safetensors.h"

namespace mambacpp {

DocumentBatches::DocumentBatches(BatchLayout layout, const TokenFile& train, int32_t eos, const MambaConfig& config,
                                 int64_t rows, int64_t length, int64_t micro_batches)
    : layout_(layout), rows_(rows), stream_(train, eos) {
  switch (layout) {
    case BatchLayout::Packed: packed_.emplace(stream_, length); break;
    case BatchLayout::Padded: padded_.emplace(stream_, length); break;
    case BatchLayout::Stateful: stateful_.emplace(stream_, config, micro_batches, rows, length); break;
    case BatchLayout::Windows: MAMBACPP_CHECK(false && "random windows are drawn by the trainer");
  }
}

const RowBatch& DocumentBatches::next(int64_t m, Rng& rng, LossOptions& options) {
  if (packed_) {
    packed_->draw(rng, rows_, batch_);
    options.positions = batch_.positions.data();
  } else if (padded_) {
    // Each row one document from the empty context: the plain path, as without packing support.
    padded_->draw(rng, rows_, batch_);
    options.positions = nullptr;
  } else {
    stateful_->next(m, batch_, options);
  }
  return batch_;
}

void DocumentBatches::after_loss(int64_t m) {
  if (stateful_) stateful_->carry(m);
}

void DocumentBatches::write_state(const std::filesystem::path& checkpoint_dir) const {
  if (stateful_)
    write_safetensors(checkpoint_dir / kStatesFile, stateful_->state_tensors(), {{"format", "mambacpp-stateful-rows"}});
}

void DocumentBatches::read_state(const std::filesystem::path& checkpoint_dir) {
  if (!stateful_) return;
  const std::filesystem::path path = checkpoint_dir / kStatesFile;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    fail(checkpoint_dir.string(), ": holds no ", kStatesFile, ", which a --stateful run's checkpoint keeps (the "
         "rows' positions in the data and their carried states)");
  stateful_->restore(read_safetensors(path), path.string());
}

}  // namespace mambacpp
