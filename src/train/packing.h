// Documents in a token stream and the batches made of them: packed rows (`train --pack`), one
// document per row padded to the longest (`train --pad`, the baseline packing is measured against),
// and the rows of consecutive windows that `train --stateful` walks (train/stateful.h).
//
// A document is a run of ids ended by the end-of-text id (`prepare` ends every document, and every
// span cut out of one for validation, with it); the stream's last document may lack it. Inputs and
// targets follow the stream: the input at index i predicts the id at i + 1, unless i + 1 starts a
// document (then the target is -1 and the loss skips it: no document predicts the next one's first
// id). Each input carries its position in its document (0 at a document's first id), which the
// model uses to restart the conv and the scan (LossOptions::positions).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/rng.h"
#include "train/token_data.h"

namespace mambacpp {

// Inputs/targets/positions of one row (or part of one).
struct RowSpan {
  int32_t* tokens;
  int32_t* targets;
  int32_t* positions;
  int64_t length;
  RowSpan subspan(int64_t offset, int64_t count) const {
    return {tokens + offset, targets + offset, positions + offset, count};
  }
};

// Rows of a batch, each `length` long, row-major: tokens, targets (-1: ignored) and positions.
struct RowBatch {
  int64_t rows = 0, length = 0;
  std::vector<int32_t> tokens, targets, positions;
  void resize(int64_t rows, int64_t length);
  RowSpan row(int64_t r) {
    const int64_t at = r * length;
    return {tokens.data() + at, targets.data() + at, positions.data() + at, length};
  }
  int64_t real_targets() const;  // targets >= 0
};

// Fills `row` with padding: token 0, target -1, position 0.
void fill_padding(const RowSpan& row);

class DocumentStream {
 public:
  // Finds the document starts of `file` (one pass). `file` must outlive the stream. BadInput if a
  // document holds 2^31 ids or more (positions are int32: most likely `eos` is not the data's).
  DocumentStream(const TokenFile& file, int32_t eos);

  int64_t size() const { return file_->size(); }
  int64_t documents() const { return int64_t(starts_.size()); }
  int64_t document_start(int64_t d) const { return starts_[size_t(d)]; }
  int64_t document_end(int64_t d) const;  // one past its last id (its end-of-text)
  // The first document start at or after index i (size() when none).
  int64_t next_document_start(int64_t i) const;

  // Inputs at stream indices start, start + 1, ... (row.length of them), with their targets and
  // positions. Past the end of the stream: padding, or with `circular` the stream again from
  // index 0 (a document start), which never predicts across the seam.
  void fill(int64_t start, const RowSpan& row, bool circular) const;

 private:
  int64_t document_of(int64_t i) const;  // the document holding index i

  const TokenFile* file_;
  std::vector<int64_t> starts_;  // ascending, starts_[0] == 0
  mutable std::vector<int32_t> ids_;  // fill()'s read buffer (so a stream serves one thread)
};

// `--pack`: the stream cut into rows of `length` inputs, row r holding indices [r L, r L + L):
// documents back to back with no padding (only the last row is padded past the end of the data);
// a document that does not fit in the rest of a row goes on in the next row with its positions
// continuing. Concatenating the rows' non-padding tokens gives the stream exactly once.
class PackedRows {
 public:
  PackedRows(const DocumentStream& stream, int64_t length);
  int64_t count() const { return count_; }
  void fill(int64_t row, const RowSpan& out) const;
  // `rows` rows drawn uniformly (with replacement) by `rng`.
  void draw(Rng& rng, int64_t rows, RowBatch& batch) const;

 private:
  const DocumentStream* stream_;
  int64_t length_, count_;
};

// `--pad`: one document per row, its inputs that have a target (all but its end-of-text), cut into
// pieces of at most `max_length` (positions continuing); a batch is as long as its longest piece
// and shorter rows are padded. Documents of a single id have nothing to learn and are left out.
class PaddedRows {
 public:
  PaddedRows(const DocumentStream& stream, int64_t max_length);
  int64_t count() const { return int64_t(pieces_.size()); }
  int64_t piece_length(int64_t piece) const { return pieces_[size_t(piece)].length; }
  // `rows` pieces drawn uniformly (with replacement) by `rng`, padded to the longest.
  void draw(Rng& rng, int64_t rows, RowBatch& batch) const;
  // The given pieces, padded to the longest.
  void fill(std::span<const int64_t> pieces, RowBatch& batch) const;

 private:
  struct Piece {
    int64_t start, length;
  };
  const DocumentStream* stream_;
  std::vector<Piece> pieces_;
};

}  // namespace mambacpp
