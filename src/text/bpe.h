// The BPE model of byte-level BPE, on raw bytes: each byte starts as the token of its byte-level
// character, then adjacent pairs merge by rank (lowest first, leftmost on ties) until no pair
// has a merge, exactly as HF tokenizers' Word::merge_all. Words already seen come from a cache.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace mambacpp::text {

// (left id, right id) -> (rank, merged id), open addressing.
class MergeTable {
 public:
  struct Merge {
    uint32_t rank;
    int32_t merged;
  };
  explicit MergeTable(size_t expected = 0);
  // A later insert of the same pair replaces the earlier one (as HF's map does).
  void insert(int32_t left, int32_t right, Merge m);
  const Merge* find(int32_t left, int32_t right) const {
    const uint64_t key = pack(left, right);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return &values_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static uint64_t pack(int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }
  size_t slot(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ULL) >> shift_); }
  void grow();

  std::vector<uint64_t> keys_;
  std::vector<Merge> values_;
  size_t mask_ = 0, size_ = 0;
  int shift_ = 64;
};

// Word bytes -> token ids, shared by all threads encoding with one tokenizer: open addressing
// over arenas of keys and ids, so a hit costs one hash, a probe or two and a memcmp. Cleared
// when full.
class WordCache {
 public:
  static constexpr size_t kMaxWordBytes = 256;  // longer words are rare: not worth keeping
  static constexpr size_t kMaxEntries = size_t(1) << 18;

  // Appends the cached ids of `word` (non-empty) to `out`; false if it is not cached.
  bool lookup(std::string_view word, std::vector<int32_t>& out) const;
  void insert(std::string_view word, const int32_t* ids, size_t count);

 private:
  struct Slot {
    uint64_t hash;
    uint32_t key_offset, ids_offset;
    uint16_t key_length;  // 0: empty slot (words are never empty)
    uint16_t id_count;
  };
  // The slot holding `word`, or the empty slot where it would go.
  size_t find_slot(std::string_view word, uint64_t hash) const;
  void rehash(size_t capacity);

  mutable std::mutex mutex_;
  std::vector<Slot> slots_;  // a power of two, at most half full
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t entries_ = 0;
};

struct BpeOptions {
  std::optional<int32_t> unk_id;  // for bytes whose character is not in the vocab
  bool fuse_unk = false;          // consecutive unknown bytes give one unk token
  // Whole words found in this map (raw bytes -> id) skip the merges (HF's ignore_merges).
  std::unordered_map<std::string, int32_t> whole_words;
  bool ignore_merges = false;
};

class BpeModel {
 public:
  // `byte_ids[b]`: the id of byte b's byte-level character, or -1 if the vocab lacks it.
  BpeModel(const std::array<int32_t, 256>& byte_ids, MergeTable merges, BpeOptions options);

  // Appends the ids of `word` (non-empty raw bytes) to `out`.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  // Without the cache; tests compare the two.
  void encode_word_uncached(std::string_view word, std::vector<int32_t>& out) const;

 private:
  std::array<int32_t, 256> byte_ids_;
  MergeTable merges_;
  BpeOptions options_;
  mutable WordCache cache_;  // memoizes encode_word_uncached
};

}  // namespace mambacpp::text
