#include "infer/prefix_cache.h"

#include <algorithm>
#include <random>

#include "core/error.h"

namespace mambacpp {

namespace {

// One more token into a prefix's key (splitmix64's finaliser over the chained value).
uint64_t extend_key(uint64_t key, int32_t token) {
  uint64_t z = key * 0x9e3779b97f4a7c15ull + uint64_t(uint32_t(token)) + 1;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t random_seed() {
  std::random_device device;
  return (uint64_t(device()) << 32) ^ device();
}

// Bookkeeping per entry beyond its arrays (list node, map slot), so tiny entries still count.
constexpr int64_t kEntryOverheadBytes = 256;

}  // namespace

int64_t PrefixStateCache::Entry::bytes() const {
  return int64_t(state.bytes() + tokens.size() * sizeof(int32_t) + logits.size() * sizeof(float)) +
         kEntryOverheadBytes;
}

PrefixStateCache::PrefixStateCache(const MambaConfig& config, int64_t capacity_bytes)
    : config_(config), capacity_(capacity_bytes), seed_(random_seed()) {
  if (capacity_bytes < 0) fail("state cache size = ", capacity_bytes, " bytes is out of range: must be >= 0");
}

void PrefixStateCache::hash_prefixes(std::span<const int32_t> tokens) {
  hashes_.resize(tokens.size() + 1);
  hashes_[0] = seed_;
  for (size_t i = 0; i < tokens.size(); ++i) hashes_[i + 1] = extend_key(hashes_[i], tokens[i]);
}

PrefixStateCache::EntryList::iterator PrefixStateCache::find(uint64_t key, std::span<const int32_t> prefix) {
  const auto it = by_key_.find(key);
  if (it == by_key_.end()) return entries_.end();
  const std::vector<int32_t>& stored = it->second->tokens;
  if (!std::equal(stored.begin(), stored.end(), prefix.begin(), prefix.end())) return entries_.end();
  return it->second;
}

PrefixStateCache::Match PrefixStateCache::lookup(std::span<const int32_t> tokens, InferenceState& state, int slot,
                                                 float* logits) {
  if (entries_.empty() || tokens.empty()) return {};
  hash_prefixes(tokens);
  const int64_t length = int64_t(tokens.size());
  auto use = [&](EntryList::iterator it) {
    entries_.splice(entries_.begin(), entries_, it);  // most recently used
    state.copy_slot(it->state, 0, slot);
    const bool whole = int64_t(it->tokens.size()) == length;
    if (whole) std::copy(it->logits.begin(), it->logits.end(), logits);
    return Match{int64_t(it->tokens.size()), whole};
  };
  if (const auto it = find(hashes_[size_t(length)], tokens); it != entries_.end() && !it->logits.empty())
    return use(it);
  // Resumable lengths below `length`, longest first.
  for (auto l = resumable_lengths_.lower_bound(length); l != resumable_lengths_.begin();) {
    --l;
    const auto it = find(hashes_[size_t(l->first)], tokens.first(size_t(l->first)));
    if (it != entries_.end() && it->resumable) return use(it);
  }
  return {};
}

void PrefixStateCache::insert(std::span<const int32_t> prefix, const InferenceState& state, int slot,
                              bool resumable, std::span<const float> logits) {
  MAMBACPP_CHECK(logits.empty() || int64_t(logits.size()) == config_.vocab_size);
  if (capacity_ == 0 || prefix.empty()) return;
  hash_prefixes(prefix);
  const uint64_t key = hashes_.back();
  EntryList::iterator it = find(key, prefix);
  if (it == entries_.end()) {
    if (const auto other = by_key_.find(key); other != by_key_.end()) erase(other->second);  // a collision
    Entry entry;
    entry.key = key;
    entry.tokens.assign(prefix.begin(), prefix.end());
    entry.state = InferenceState(config_, 1);
    if (entry.bytes() + int64_t(logits.size() * sizeof(float)) > capacity_) return;
    entry.state.copy_slot(state, slot, 0);
    entries_.push_front(std::move(entry));
    it = entries_.begin();
    by_key_[key] = it;
    bytes_ += it->bytes();
  } else {
    entries_.splice(entries_.begin(), entries_, it);
  }
  if (resumable && !it->resumable) {
    it->resumable = true;
    ++resumable_lengths_[int64_t(prefix.size())];
  }
  if (!logits.empty() && it->logits.empty()) {
    it->logits.assign(logits.begin(), logits.end());
    bytes_ += int64_t(logits.size() * sizeof(float));
  }
  evict_to_fit();
}

void PrefixStateCache::erase(EntryList::iterator it) {
  if (it->resumable) {
    const auto l = resumable_lengths_.find(int64_t(it->tokens.size()));
    if (--l->second == 0) resumable_lengths_.erase(l);
  }
  bytes_ -= it->bytes();
  by_key_.erase(it->key);
  entries_.erase(it);
}

void PrefixStateCache::evict_to_fit() {
  while (bytes_ > capacity_ && !entries_.empty()) erase(std::prev(entries_.end()));
}

}  // namespace mambacpp
