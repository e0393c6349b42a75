// Token files: the ids of a tokenized corpus, as `prepare` writes them and training reads them.
// Layout, little-endian, a 32-byte header then the ids:
//   offset 0  "MCTK"              offset 12  u32 vocabulary size (every id is below it)
//   offset 4  u32 version (1)     offset 16  u64 id count
//   offset 8  u32 bytes per id:   offset 24  u64 reserved, 0
//             2 (uint16) or 4 (uint32)
// The writer picks uint16 whenever the vocabulary fits (<= 65536 ids).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include "core/mapped_file.h"
#include "core/rng.h"

namespace mambacpp {

inline constexpr uint32_t kTokenFileVersion = 1;
inline constexpr size_t kTokenFileHeaderBytes = 32;

// Writes `ids` (each in [0, vocab_size)) to `path` atomically (io/atomic_file.h).
void write_token_file(const std::filesystem::path& path, std::span<const int32_t> ids, int64_t vocab_size);

// A tokenized corpus cut into a training and a validation stream. Every document's ids are
// followed by `eos`. From each document a contiguous span of round(val_fraction x its length) ids,
// at a position drawn from `rng`, goes to val (then eos); the rest goes to train, with an eos
// where the span was cut out of the middle. So every document feeds both streams in proportion.
struct TrainValSplit {
  std::vector<int32_t> train, val;
};
TrainValSplit split_train_val(std::span<const std::vector<int32_t>> documents, int32_t eos, double val_fraction,
                              Rng& rng);

class TokenFile {
 public:
  // Maps the file and checks it whole before returning: magic, version, id width, the count
  // against the file size, and every id against the vocabulary size (a pass at memory speed,
  // so a bad file fails here, before training starts). BadInput naming the file and the fault.
  static TokenFile open(const std::filesystem::path& path);

  int64_t size() const { return count_; }  // number of ids
  int64_t vocab_size() const { return vocab_size_; }
  int bytes_per_id() const { return bytes_per_id_; }
  const std::filesystem::path& path() const { return file_->path(); }

  int32_t operator[](int64_t i) const;
  // Copies ids [start, start + out.size()), which must lie in the file.
  void read(int64_t start, std::span<int32_t> out) const;
  // Fills `out` with out.size() consecutive ids starting at a position drawn uniformly from
  // `rng` among all that fit; returns that position. BadInput naming the file if it holds fewer
  // than out.size() ids (a training window of length L needs L + 1: inputs and next tokens).
  int64_t sample_window(Rng& rng, std::span<int32_t> out) const;

 private:
  TokenFile() = default;
  const std::byte* ids() const { return file_->data() + kTokenFileHeaderBytes; }

  std::shared_ptr<const MappedFile> file_;
  int64_t count_ = 0, vocab_size_ = 0;
  int bytes_per_id_ = 2;
};

}  // namespace mambacpp
