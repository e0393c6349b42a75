// Recurrent states after token prefixes, so a prompt that starts like an earlier one skips
// re-reading the shared part. A Mamba state has the same size whatever the prefix length (for
// 130m: 24 layers x 1536 channels x (3 conv + 16 SSM) floats = 2.8 MB), so a long shared
// document costs one state per kept boundary.
//
// An entry is the state of one sequence (every layer's conv and SSM state) after exactly its
// prefix, the prefix's tokens themselves (compared on every hit, so a hash collision can never
// hand out another prefix's state) and, optionally, the logits at the prefix's last position.
// Entries come in two uses, chosen by the caller when storing:
//  - resumable: a longer prompt may start from it (the caller stores these only where its cold
//    prefill also cuts the prompt, so a resumed run repeats the cold run's arithmetic exactly);
//  - with logits: the very same prompt needs no model call at all.
// Eviction is least-recently-used inside a byte budget that counts states, tokens and logits.
// Not thread-safe (the serving engine's thread owns it).
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <span>
#include <unordered_map>
#include <vector>

#include "io/config.h"
#include "model/mamba_model.h"  // InferenceState

namespace mambacpp {

class PrefixStateCache {
 public:
  PrefixStateCache(const MambaConfig& config, int64_t capacity_bytes);

  struct Match {
    int64_t length = 0;        // prompt tokens the state covers; 0: nothing usable was cached
    bool with_logits = false;  // the whole prompt: its last-position logits were copied too
  };
  // The longest usable entry for `tokens`: the whole of `tokens` when it was stored with logits
  // (they go to `logits` [vocab_size]), else the longest resumable prefix shorter than `tokens`,
  // so at least one token is left to run. Its state goes to slot `slot` of `state`, which is
  // untouched on a miss. A hit makes the entry the most recently used.
  Match lookup(std::span<const int32_t> tokens, InferenceState& state, int slot, float* logits);

  // Stores slot `slot` of `state` as the state after `prefix`. An entry already there for the
  // same prefix is refreshed and gains what this call adds (resumable, logits). An entry larger
  // than the whole budget is not kept.
  void insert(std::span<const int32_t> prefix, const InferenceState& state, int slot, bool resumable,
              std::span<const float> logits = {});

  int64_t bytes() const { return bytes_; }
  int64_t entries() const { return int64_t(entries_.size()); }
  int64_t capacity_bytes() const { return capacity_; }

 private:
  struct Entry {
    uint64_t key = 0;
    std::vector<int32_t> tokens;
    InferenceState state;        // batch 1
    std::vector<float> logits;   // empty, or [vocab_size]
    bool resumable = false;
    int64_t bytes() const;
  };
  using EntryList = std::list<Entry>;  // most recently used first

  // hashes_[i] = the key of tokens[0, i), for i in [0, tokens.size()].
  void hash_prefixes(std::span<const int32_t> tokens);
  EntryList::iterator find(uint64_t key, std::span<const int32_t> prefix);
  void erase(EntryList::iterator it);
  void evict_to_fit();

  MambaConfig config_;
  int64_t capacity_;
  int64_t bytes_ = 0;
  uint64_t seed_;  // random per cache: prompts cannot be crafted to collide on purpose
  EntryList entries_;
  std::unordered_map<uint64_t, EntryList::iterator> by_key_;
  std::map<int64_t, int64_t> resumable_lengths_;  // length -> how many resumable entries have it
  std::vector<uint64_t> hashes_;  // scratch
};

}  // namespace mambacpp
