#include "text/bpe.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "core/error.h"

namespace mambacpp::text {

// ---- MergeTable -----------------------------------------------------------------------------

MergeTable::MergeTable(size_t expected) {
  size_t capacity = 16;
  while (capacity < expected * 2) capacity *= 2;
  keys_.assign(capacity, kEmpty);
  values_.resize(capacity);
  mask_ = capacity - 1;
  shift_ = 64 - std::countr_zero(capacity);
}

void MergeTable::insert(int32_t left, int32_t right, Merge m) {
  if ((size_ + 1) * 2 > keys_.size()) grow();
  const uint64_t key = pack(left, right);
  size_t i = slot(key);
  while (keys_[i] != kEmpty && keys_[i] != key) i = (i + 1) & mask_;
  if (keys_[i] == kEmpty) ++size_;
  keys_[i] = key;
  values_[i] = m;
}

void MergeTable::grow() {
  MergeTable bigger(keys_.size());
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (keys_[i] != kEmpty) {
      bigger.insert(int32_t(keys_[i] >> 32), int32_t(uint32_t(keys_[i])), values_[i]);
    }
  }
  *this = std::move(bigger);
}

// ---- WordCache ------------------------------------------------------------------------------

namespace {

// A multiply-xorshift hash over 8-byte words; words are short, so this beats std::hash.
uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ s.size();
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 31;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, s.data() + i, s.size() - i);
  h = (h ^ tail) * 0x94D049BB133111EBULL;
  return h ^ (h >> 29);
}

}  // namespace

size_t WordCache::find_slot(std::string_view word, uint64_t hash) const {
  const size_t mask = slots_.size() - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.key_length == 0) return i;
    if (s.hash == hash && s.key_length == word.size() &&
        std::memcmp(keys_.data() + s.key_offset, word.data(), word.size()) == 0) {
      return i;
    }
  }
}

bool WordCache::lookup(std::string_view word, std::vector<int32_t>& out) const {
  const uint64_t hash = hash_bytes(word);
  const std::lock_guard lock(mutex_);
  if (slots_.empty()) return false;
  const Slot& s = slots_[find_slot(word, hash)];
  if (s.key_length == 0) return false;
  out.insert(out.end(), ids_.begin() + s.ids_offset, ids_.begin() + s.ids_offset + s.id_count);
  return true;
}

void WordCache::insert(std::string_view word, const int32_t* ids, size_t count) {
  if (word.empty() || word.size() > kMaxWordBytes) return;
  const uint64_t hash = hash_bytes(word);
  const std::lock_guard lock(mutex_);
  if (entries_ >= kMaxEntries) {  // start over rather than track what is least used
    std::fill(slots_.begin(), slots_.end(), Slot{});
    keys_.clear();
    ids_.clear();
    entries_ = 0;
  }
  if ((entries_ + 1) * 2 > slots_.size()) rehash(std::max<size_t>(1024, slots_.size() * 2));
  Slot& s = slots_[find_slot(word, hash)];
  if (s.key_length != 0) return;  // another thread got there first
  s = {hash, uint32_t(keys_.size()), uint32_t(ids_.size()), uint16_t(word.size()), uint16_t(count)};
  keys_.append(word);
  ids_.insert(ids_.end(), ids, ids + count);
  ++entries_;
}

void WordCache::rehash(size_t capacity) {
  std::vector<Slot> old(capacity);
  old.swap(slots_);
  const size_t mask = capacity - 1;
  for (const Slot& s : old) {
    if (s.key_length == 0) continue;
    size_t i = s.hash & mask;
    while (slots_[i].key_length != 0) i = (i + 1) & mask;
    slots_[i] = s;
  }
}

// ---- BpeModel -------------------------------------------------------------------------------

namespace {

// A symbol of the word being merged: a doubly linked list over the initial positions, so a
// merge never moves anything; the right-hand symbol of a merge is marked dead.
struct Symbol {
  int32_t id;
  int32_t prev, next;  // -1 at the ends
  bool alive;
};

struct Candidate {
  uint32_t rank;
  int32_t pos;  // position of the left symbol
  int32_t merged;
  // Lowest rank first, then leftmost.
  bool operator<(const Candidate& o) const {
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

}  // namespace

BpeModel::BpeModel(const std::array<int32_t, 256>& byte_ids, MergeTable merges,
                   BpeOptions options)
    : byte_ids_(byte_ids), merges_(std::move(merges)), options_(std::move(options)) {}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() == 1 && byte_ids_[uint8_t(word[0])] >= 0) {
    out.push_back(byte_ids_[uint8_t(word[0])]);
    return;
  }
  if (cache_.lookup(word, out)) return;
  const size_t start = out.size();
  encode_word_uncached(word, out);
  cache_.insert(word, out.data() + start, out.size() - start);
}

void BpeModel::encode_word_uncached(std::string_view word, std::vector<int32_t>& out) const {
  if (options_.ignore_merges) {
    const auto it = options_.whole_words.find(std::string(word));
    if (it != options_.whole_words.end()) {
      out.push_back(it->second);
      return;
    }
  }
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap;
  symbols.clear();
  bool previous_unknown = false;
  for (const char c : word) {
    const int32_t id = byte_ids_[uint8_t(c)];
    if (id < 0 && !options_.unk_id) continue;  // HF drops characters it cannot represent
    if (id < 0 && options_.fuse_unk && previous_unknown) continue;
    previous_unknown = id < 0;
    const auto n = int32_t(symbols.size());
    symbols.push_back({id < 0 ? *options_.unk_id : id, n - 1, -1, true});
    if (n > 0) symbols[size_t(n) - 1].next = n;
  }

  // A binary heap of merge candidates; stale ones are skipped when they surface.
  heap.clear();
  const auto push = [&](uint32_t rank, int32_t pos, int32_t merged) {
    heap.push_back({rank, pos, merged});
    std::push_heap(heap.begin(), heap.end());
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const auto* m = merges_.find(symbols[i].id, symbols[i + 1].id)) {
      push(m->rank, int32_t(i), m->merged);
    }
  }
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[size_t(top.pos)];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[size_t(left.next)];
    // Skip entries made stale by an earlier merge (the pair at this position has changed).
    const auto* m = merges_.find(left.id, right.id);
    if (!m || m->merged != top.merged) continue;
    left.id = top.merged;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) symbols[size_t(left.next)].prev = top.pos;
    if (left.prev >= 0) {
      if (const auto* p = merges_.find(symbols[size_t(left.prev)].id, left.id)) {
        push(p->rank, left.prev, p->merged);
      }
    }
    if (left.next >= 0) {
      if (const auto* n = merges_.find(left.id, symbols[size_t(left.next)].id)) {
        push(n->rank, top.pos, n->merged);
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.alive) out.push_back(s.id);
  }
}

}  // namespace mambacpp::text
