#include "train/token_data.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"

namespace mambacpp {
namespace {

static_assert(std::endian::native == std::endian::little, "token files are read and written as little-endian");

constexpr std::string_view kMagic = "MCTK";
constexpr int64_t kMaxVocab = std::numeric_limits<int32_t>::max();

struct Header {
  char magic[4];
  uint32_t version, bytes_per_id, vocab_size;
  uint64_t count, reserved;
};
static_assert(sizeof(Header) == kTokenFileHeaderBytes);

template <class T>
void write_ids_as(AtomicFile& out, std::span<const int32_t> ids) {
  std::vector<T> chunk;
  constexpr size_t kChunk = size_t(1) << 16;
  for (size_t begin = 0; begin < ids.size(); begin += kChunk) {
    const std::span<const int32_t> part = ids.subspan(begin, std::min(kChunk, ids.size() - begin));
    chunk.assign(part.begin(), part.end());
    out.write(chunk.data(), chunk.size() * sizeof(T));
  }
}

// The first id at or above `vocab`, as an error naming the file and its position.
template <class T>
void check_ids(const std::byte* data, int64_t count, int64_t vocab, const std::filesystem::path& path) {
  const T* ids = reinterpret_cast<const T*>(data);
  for (int64_t i = 0; i < count; ++i)
    if (int64_t(ids[i]) >= vocab)
      fail(path.string(), ": id ", int64_t(ids[i]), " at position ", i, " is outside the vocabulary (", vocab,
           " tokens): the file is corrupt");
}

template <class T>
void widen(const std::byte* data, int64_t start, std::span<int32_t> out) {
  const T* ids = reinterpret_cast<const T*>(data) + start;
  std::copy(ids, ids + out.size(), out.begin());
}

}  // namespace

void write_token_file(const std::filesystem::path& path, std::span<const int32_t> ids, int64_t vocab_size) {
  if (vocab_size < 1 || vocab_size > kMaxVocab)
    fail(path.string(), ": vocabulary size ", vocab_size, " is out of range [1, ", kMaxVocab, "]");
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab_size)
      fail(path.string(), ": id ", ids[i], " at position ", i, " is outside the vocabulary (", vocab_size, " tokens)");
  const bool narrow = vocab_size <= 65536;
  Header h{};
  std::memcpy(h.magic, kMagic.data(), 4);
  h.version = kTokenFileVersion;
  h.bytes_per_id = narrow ? 2 : 4;
  h.vocab_size = uint32_t(vocab_size);
  h.count = ids.size();
  AtomicFile out(path);
  out.write(&h, sizeof h);
  if (narrow) {
    write_ids_as<uint16_t>(out, ids);
  } else {
    write_ids_as<uint32_t>(out, ids);
  }
  out.commit();
}

TrainValSplit split_train_val(std::span<const std::vector<int32_t>> documents, int32_t eos, double val_fraction,
                              Rng& rng) {
  MAMBACPP_CHECK(val_fraction >= 0 && val_fraction <= 1);
  TrainValSplit split;
  for (const std::vector<int32_t>& doc : documents) {
    const auto n = int64_t(doc.size());
    const auto val_length = std::llround(val_fraction * double(n));
    const int64_t start = val_length > 0 ? int64_t(rng.below(uint64_t(n - val_length + 1))) : n;
    const int64_t end = start + val_length;
    const bool head = start > 0, tail = end < n;
    split.train.insert(split.train.end(), doc.begin(), doc.begin() + start);
    if (head && tail) split.train.push_back(eos);
    split.train.insert(split.train.end(), doc.begin() + end, doc.end());
    if (head || tail) split.train.push_back(eos);
    if (val_length > 0) {
      split.val.insert(split.val.end(), doc.begin() + start, doc.begin() + end);
      split.val.push_back(eos);
    }
  }
  return split;
}

TokenFile TokenFile::open(const std::filesystem::path& path) {
  TokenFile t;
  t.file_ = MappedFile::open(path);
  const std::string name = path.string();
  const size_t size = t.file_->size();
  if (size < sizeof(Header))
    fail(name, ": ", size, " bytes, too short for a token file (its header alone is ", sizeof(Header), " bytes)");
  Header h;
  std::memcpy(&h, t.file_->data(), sizeof h);
  if (std::string_view(h.magic, 4) != kMagic) fail(name, ": not a token file (it does not start with MCTK)");
  if (h.version != kTokenFileVersion)
    fail(name, ": token file version ", h.version, " is not supported (this build reads version ", kTokenFileVersion, ")");
  if (h.bytes_per_id != 2 && h.bytes_per_id != 4)
    fail(name, ": bytes per id is ", h.bytes_per_id, " in the header; must be 2 (uint16) or 4 (uint32)");
  if (h.vocab_size < 1 || h.vocab_size > kMaxVocab)
    fail(name, ": vocabulary size ", h.vocab_size, " in the header is out of range [1, ", kMaxVocab, "]");
  if (h.reserved != 0) fail(name, ": the header's reserved field is not 0: the file is corrupt");
  const uint64_t payload = size - sizeof(Header);
  if (h.count > payload / h.bytes_per_id || h.count * h.bytes_per_id != payload)
    fail(name, ": the header counts ", h.count, " ids of ", h.bytes_per_id, " bytes but ", payload,
         " bytes follow it (truncated or corrupt)");
  t.count_ = int64_t(h.count);
  t.vocab_size_ = h.vocab_size;
  t.bytes_per_id_ = int(h.bytes_per_id);
  if (t.bytes_per_id_ == 2) {
    check_ids<uint16_t>(t.ids(), t.count_, t.vocab_size_, path);
  } else {
    check_ids<uint32_t>(t.ids(), t.count_, t.vocab_size_, path);
  }
  return t;
}

int32_t TokenFile::operator[](int64_t i) const {
  MAMBACPP_CHECK(i >= 0 && i < count_);
  int32_t id = 0;
  read(i, std::span<int32_t>(&id, 1));
  return id;
}

void TokenFile::read(int64_t start, std::span<int32_t> out) const {
  MAMBACPP_CHECK(start >= 0 && start <= count_ && int64_t(out.size()) <= count_ - start);
  if (bytes_per_id_ == 2) {
    widen<uint16_t>(ids(), start, out);
  } else {
    widen<uint32_t>(ids(), start, out);
  }
}

int64_t TokenFile::sample_window(Rng& rng, std::span<int32_t> out) const {
  const auto length = int64_t(out.size());
  if (length > count_)
    fail(path().string(), ": holds ", count_, " tokens, fewer than a window of ", length,
         " (sequence length + 1); use a shorter sequence length or more data");
  const auto start = int64_t(rng.below(uint64_t(count_ - length + 1)));
  read(start, out);
  return start;
}

}  // namespace mambacpp
