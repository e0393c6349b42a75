#include "train/packing.h"

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace mambacpp {

void RowBatch::resize(int64_t row_count, int64_t row_length) {
  rows = row_count;
  length = row_length;
  const auto n = size_t(rows * length);
  tokens.resize(n);
  targets.resize(n);
  positions.resize(n);
}

int64_t RowBatch::real_targets() const {
  return std::count_if(targets.begin(), targets.end(), [](int32_t t) { return t >= 0; });
}

void fill_padding(const RowSpan& row) {
  std::fill_n(row.tokens, row.length, 0);
  std::fill_n(row.targets, row.length, -1);
  std::fill_n(row.positions, row.length, 0);
}

// ---- DocumentStream ---------------------------------------------------------------------------

DocumentStream::DocumentStream(const TokenFile& file, int32_t eos) : file_(&file), starts_{0} {
  constexpr int64_t kChunk = int64_t(1) << 20;
  std::vector<int32_t> chunk;
  for (int64_t begin = 0; begin < file.size(); begin += kChunk) {
    chunk.resize(size_t(std::min(kChunk, file.size() - begin)));
    file.read(begin, chunk);
    for (size_t k = 0; k < chunk.size(); ++k) {
      const int64_t next = begin + int64_t(k) + 1;
      if (chunk[k] == eos && next < file.size()) starts_.push_back(next);
    }
  }
  for (int64_t d = 0; d < documents(); ++d)
    if (document_end(d) - document_start(d) > std::numeric_limits<int32_t>::max())
      fail(file.path().string(), ": the document starting at id ", document_start(d), " holds ",
           document_end(d) - document_start(d), " ids, more than positions (int32) count: is ", eos,
           " the data's end-of-text id?");
}

int64_t DocumentStream::document_end(int64_t d) const {
  return d + 1 < documents() ? starts_[size_t(d + 1)] : size();
}

int64_t DocumentStream::next_document_start(int64_t i) const {
  const auto it = std::lower_bound(starts_.begin(), starts_.end(), i);
  return it == starts_.end() ? size() : *it;
}

int64_t DocumentStream::document_of(int64_t i) const {
  return int64_t(std::upper_bound(starts_.begin(), starts_.end(), i) - starts_.begin()) - 1;
}

void DocumentStream::fill(int64_t start, const RowSpan& row, bool circular) const {
  MAMBACPP_CHECK(start >= 0 && size() >= 1);
  int64_t done = 0;
  while (done < row.length) {
    const int64_t index = circular ? (start + done) % size() : start + done;
    if (index >= size()) {
      fill_padding(row.subspan(done, row.length - done));
      return;
    }
    const int64_t count = std::min(row.length - done, size() - index);
    // One segment inside the stream: ids [index, index + count], the last one only as a target.
    ids_.resize(size_t(std::min(count + 1, size() - index)));
    file_->read(index, ids_);
    int64_t d = document_of(index);
    int64_t next_start = document_end(d);
    for (int64_t k = 0; k < count; ++k) {
      const int64_t j = index + k;
      if (j == next_start) next_start = document_end(++d);
      const int64_t at = done + k;
      row.tokens[at] = ids_[size_t(k)];
      row.positions[at] = int32_t(j - starts_[size_t(d)]);
      const bool predicts_next = j + 1 < size() && j + 1 != next_start;
      row.targets[at] = predicts_next ? ids_[size_t(k + 1)] : -1;
    }
    done += count;
  }
}

// ---- PackedRows -------------------------------------------------------------------------------

PackedRows::PackedRows(const DocumentStream& stream, int64_t length)
    : stream_(&stream), length_(length), count_((stream.size() + length - 1) / length) {
  MAMBACPP_CHECK(length >= 1);
}

void PackedRows::fill(int64_t row, const RowSpan& out) const {
  MAMBACPP_CHECK(row >= 0 && row < count_ && out.length == length_);
  stream_->fill(row * length_, out, false);
}

void PackedRows::draw(Rng& rng, int64_t rows, RowBatch& batch) const {
  batch.resize(rows, length_);
  for (int64_t b = 0; b < rows; ++b) fill(int64_t(rng.below(uint64_t(count_))), batch.row(b));
}

// ---- PaddedRows -------------------------------------------------------------------------------

PaddedRows::PaddedRows(const DocumentStream& stream, int64_t max_length) : stream_(&stream) {
  MAMBACPP_CHECK(max_length >= 1);
  for (int64_t d = 0; d < stream.documents(); ++d) {
    const int64_t start = stream.document_start(d);
    const int64_t inputs = stream.document_end(d) - start - 1;  // all but the last id predict one
    for (int64_t k = 0; k < inputs; k += max_length) pieces_.push_back({start + k, std::min(max_length, inputs - k)});
  }
}

void PaddedRows::draw(Rng& rng, int64_t rows, RowBatch& batch) const {
  if (pieces_.empty()) fail("the training data holds no document of two or more tokens: nothing to learn");
  std::vector<int64_t> chosen(static_cast<size_t>(rows));
  for (int64_t& piece : chosen) piece = int64_t(rng.below(uint64_t(pieces_.size())));
  fill(chosen, batch);
}

void PaddedRows::fill(std::span<const int64_t> pieces, RowBatch& batch) const {
  int64_t longest = 1;
  for (const int64_t p : pieces) longest = std::max(longest, pieces_[size_t(p)].length);
  batch.resize(int64_t(pieces.size()), longest);
  for (size_t b = 0; b < pieces.size(); ++b) {
    const Piece& piece = pieces_[size_t(pieces[b])];
    const RowSpan row = batch.row(int64_t(b));
    stream_->fill(piece.start, row.subspan(0, piece.length), false);
    fill_padding(row.subspan(piece.length, longest - piece.length));
  }
}

}  // namespace mambacpp
