// Packed and padded batches of documents (src/train/packing.h): the rows of a hand-made document
// list written out by hand (ids, targets -1 where a document ends, positions restarting at each
// document and continuing in the next row); on random document lists, nothing lost or duplicated;
// and a packed row's loss and gradient equal the sums of its documents run one by one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <span>
#include <vector>

#include "core/rng.h"
#include "model/mamba_model.h"
#include "model/parameters.h"
#include "test_support.h"
#include "train_test_support.h"
#include "train/packing.h"
#include "train/token_data.h"

namespace mambacpp {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

constexpr int32_t kEos = 0;

std::vector<int32_t> join(const std::vector<std::vector<int32_t>>& documents) {
  std::vector<int32_t> ids;
  for (const auto& d : documents) ids.insert(ids.end(), d.begin(), d.end());
  return ids;
}

TokenFile token_file(const TempDir& dir, const std::vector<int32_t>& ids, int64_t vocab = 100) {
  const fs::path path = dir / "train.tokens";
  write_token_file(path, ids, vocab);
  return TokenFile::open(path);
}

// Three documents ended by EOS (0) and a last one without: 18 ids.
const std::vector<std::vector<int32_t>> kDocuments = {
    {5, 6, 7, 0}, {8, 0}, {9, 10, 11, 12, 13, 14, 15, 16, 17, 0}, {20, 21}};

struct ExpectedRow {
  std::vector<int32_t> tokens, targets, positions;
};

void expect_rows(const RowBatch& batch, const std::vector<ExpectedRow>& rows) {
  ASSERT_EQ(batch.rows, int64_t(rows.size()));
  for (size_t r = 0; r < rows.size(); ++r) {
    const auto at = ptrdiff_t(int64_t(r) * batch.length);
    auto row = [&](const std::vector<int32_t>& v) { return std::vector<int32_t>(v.begin() + at, v.begin() + at + batch.length); };
    EXPECT_EQ(row(batch.tokens), rows[r].tokens) << "tokens of row " << r;
    EXPECT_EQ(row(batch.targets), rows[r].targets) << "targets of row " << r;
    EXPECT_EQ(row(batch.positions), rows[r].positions) << "positions of row " << r;
  }
}

RowBatch packed_rows(const PackedRows& packed) {
  RowBatch batch;
  batch.resize(packed.count(), 4);
  for (int64_t r = 0; r < packed.count(); ++r) packed.fill(r, batch.row(r));
  return batch;
}

TEST(DocumentStream, FindsTheDocumentsEndedByEos) {
  TempDir dir;
  const TokenFile file = token_file(dir, join(kDocuments));
  const DocumentStream stream(file, kEos);
  ASSERT_EQ(stream.documents(), 4);
  const std::vector<std::pair<int64_t, int64_t>> expected = {{0, 4}, {4, 6}, {6, 16}, {16, 18}};
  for (int64_t d = 0; d < 4; ++d) {
    EXPECT_EQ(stream.document_start(d), expected[size_t(d)].first) << d;
    EXPECT_EQ(stream.document_end(d), expected[size_t(d)].second) << d;
  }
  EXPECT_EQ(stream.next_document_start(0), 0);
  EXPECT_EQ(stream.next_document_start(5), 6);
  EXPECT_EQ(stream.next_document_start(17), 18);
}

TEST(PackedRows, HandMadeDocumentsGiveTheseRows) {
  TempDir dir;
  const TokenFile file = token_file(dir, join(kDocuments));
  const DocumentStream stream(file, kEos);
  const PackedRows packed(stream, 4);
  ASSERT_EQ(packed.count(), 5);  // 18 ids in rows of 4: the last row half padding
  expect_rows(packed_rows(packed), {
      {{5, 6, 7, 0}, {6, 7, 0, -1}, {0, 1, 2, 3}},             // the EOS does not predict the next document
      {{8, 0, 9, 10}, {0, -1, 10, 11}, {0, 1, 0, 1}},          // two documents start in this row
      {{11, 12, 13, 14}, {12, 13, 14, 15}, {2, 3, 4, 5}},      // the third goes on, positions continuing
      {{15, 16, 17, 0}, {16, 17, 0, -1}, {6, 7, 8, 9}},
      {{20, 21, 0, 0}, {21, -1, -1, -1}, {0, 1, 0, 0}},        // end of the data: padding
  });
}

TEST(PaddedRows, OneDocumentPerRowPaddedToTheLongest) {
  TempDir dir;
  const TokenFile file = token_file(dir, join(kDocuments));
  const DocumentStream stream(file, kEos);
  const PaddedRows padded(stream, 4);
  // Inputs with a target: 3, 1, 9 (cut into 4 + 4 + 1), 1.
  ASSERT_EQ(padded.count(), 6);
  const std::vector<int64_t> lengths = {3, 1, 4, 4, 1, 1};
  for (int64_t p = 0; p < 6; ++p) EXPECT_EQ(padded.piece_length(p), lengths[size_t(p)]) << p;
  RowBatch batch;
  const std::vector<int64_t> pieces = {0, 3, 4};
  padded.fill(pieces, batch);
  EXPECT_EQ(batch.length, 4);
  expect_rows(batch, {
      {{5, 6, 7, 0}, {6, 7, 0, -1}, {0, 1, 2, 0}},
      {{13, 14, 15, 16}, {14, 15, 16, 17}, {4, 5, 6, 7}},
      {{17, 0, 0, 0}, {0, -1, -1, -1}, {8, 0, 0, 0}},
  });
  const std::vector<int64_t> short_pieces = {1, 5};
  padded.fill(short_pieces, batch);  // as long as the longest piece drawn, not the limit
  EXPECT_EQ(batch.length, 1);
  expect_rows(batch, {{{8}, {0}, {0}}, {{20}, {21}, {0}}});
}

// Random documents (lengths 1 to 40, some without a trailing EOS at the end of the data) cut into
// rows of several lengths: the rows' first `size` inputs are the stream, each target is the next
// id of the same document or -1 at its last id, each position the index inside the document.
TEST(PackedRows, RandomDocumentsAreNeitherLostNorDuplicated) {
  Rng rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<std::vector<int32_t>> documents(1 + rng.below(30));
    for (auto& d : documents) {
      d.resize(1 + rng.below(40));
      for (auto& id : d) id = 1 + int32_t(rng.below(99));
      d.back() = kEos;
    }
    if (trial % 2) documents.back().back() = 42;  // the last document unended
    const std::vector<int32_t> ids = join(documents);
    TempDir dir;
    const TokenFile file = token_file(dir, ids);
    const DocumentStream stream(file, kEos);
    ASSERT_EQ(stream.documents(), int64_t(documents.size()));
    for (const int64_t length : {1, 3, 16, 64}) {
      SCOPED_TRACE(cat("trial ", trial, ", rows of ", length));
      const PackedRows packed(stream, length);
      EXPECT_EQ(packed.count(), (int64_t(ids.size()) + length - 1) / length);
      RowBatch rows;
      rows.resize(packed.count(), length);
      for (int64_t r = 0; r < packed.count(); ++r) packed.fill(r, rows.row(r));
      size_t i = 0;
      for (const auto& d : documents) {
        for (size_t k = 0; k < d.size(); ++k, ++i) {
          ASSERT_EQ(rows.tokens[i], d[k]) << "input " << i;
          ASSERT_EQ(rows.positions[i], int32_t(k)) << "input " << i;
          ASSERT_EQ(rows.targets[i], k + 1 < d.size() ? d[k + 1] : -1) << "input " << i;
        }
      }
      for (; i < rows.tokens.size(); ++i) ASSERT_EQ(rows.targets[i], -1) << "padding at " << i;
    }
  }
}

// ---- A packed row through the model --------------------------------------------------------------

MambaConfig tiny_config() { return testing::tiny_document_config(kEos); }

// Elementwise |expected - actual| <= 1e-6 + 1e-4 |expected| (fp32 sums taken in another order:
// per row versus per document), reporting the worst element.
void expect_close(std::span<const float> expected, std::span<const float> actual, const char* what) {
  ASSERT_EQ(expected.size(), actual.size());
  size_t worst = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double bound = 1e-6 + 1e-4 * std::abs(expected[i]);
    const double excess = std::abs(double(expected[i]) - actual[i]) - bound;
    if (excess > worst_excess) worst_excess = excess, worst = i;
  }
  EXPECT_LE(worst_excess, 0) << what << ": worst element " << worst << " expected " << expected[worst] << " actual "
                             << actual[worst];
}

// One row holding the four documents (18 ids, no padding) gives the loss and gradient of the four
// documents each run alone: the conv and the scan restart at every document, and no target
// crosses one. The row is longer than the model's chunk, so a restart also falls inside a chunk.
TEST(PackedRows, APackedRowsLossAndGradientAreTheSumsOfItsDocuments) {
  TempDir dir;
  const TokenFile file = token_file(dir, join(kDocuments));
  const DocumentStream stream(file, kEos);
  const PackedRows packed(stream, 18);
  ASSERT_EQ(packed.count(), 1);
  RowBatch row;
  row.resize(1, 18);
  packed.fill(0, row.row(0));

  MambaModel model = MambaModel::random(tiny_config(), 3);
  model.set_chunk_length(5);
  model.set_scan_checkpoint_every(3);
  Parameters packed_grads(model.config(), WeightType::F32), separate_grads(model.config(), WeightType::F32);
  packed_grads.zero();
  separate_grads.zero();
  LossOptions options;
  options.positions = row.positions.data();
  const MambaModel::Loss together = model.loss(row.tokens.data(), row.targets.data(), 1, 18, &packed_grads, 1.0f, options);

  double sum = 0;
  int64_t count = 0;
  for (const auto& d : kDocuments) {
    const std::vector<int32_t> inputs(d.begin(), d.end() - 1), targets(d.begin() + 1, d.end());
    const MambaModel::Loss alone =
        model.loss(inputs.data(), targets.data(), 1, int64_t(inputs.size()), &separate_grads, 1.0f);
    sum += alone.sum;
    count += alone.count;
  }
  EXPECT_EQ(together.count, count);
  EXPECT_EQ(together.count, 14);  // 18 inputs less the 4 document ends
  EXPECT_NEAR(together.sum, sum, 1e-5 * std::abs(sum)) << "packed " << together.sum << ", separate " << sum;
  for (const ParamSpec& s : model.parameters().table().specs()) {
    SCOPED_TRACE(s.name);
    const Tensor a = separate_grads.export_tensor(s, DType::F32), b = packed_grads.export_tensor(s, DType::F32);
    const auto n = size_t(a.numel());
    expect_close({a.data<float>(), n}, {b.data<float>(), n}, s.name.c_str());
  }
  // Without positions the same row is one document: its loss differs (the check can fail).
  Parameters ignored(model.config(), WeightType::F32);
  const MambaModel::Loss unpacked = model.loss(row.tokens.data(), row.targets.data(), 1, 18, &ignored, 1.0f);
  EXPECT_GT(std::abs(unpacked.sum - sum), 1e-3);
}

}  // namespace
}  // namespace mambacpp
