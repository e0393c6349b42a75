#include "text/bpe_trainer.h"

#include <algorithm>
#include <array>
#include <exception>
#include <optional>
#include <queue>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "text/added_tokens.h"
#include "text/byte_level.h"
#include "text/pre_tokenizer.h"
#include "text/utf8.h"

namespace mambacpp::text {
namespace {

// ---- Counting words -------------------------------------------------------------------------

void count_document_words(std::string_view document, const AddedTokenMatcher& specials,
                          const PreTokenizer& pre_tokenizer, WordCounts& counts) {
  std::string repaired;
  if (!is_valid_utf8(document)) {
    repaired = replace_invalid_utf8(document);
    document = repaired;
  }
  std::vector<AddedMatch> matches;
  specials.find(document, matches);
  PreTokenizerScratch scratch;
  std::vector<std::string_view> words;
  // The text between special tokens, one stretch at a time (so `words` stays small).
  const auto count_stretch = [&](size_t begin, size_t end) {
    if (end <= begin) return;
    words.clear();
    scratch.owned.clear();
    pre_tokenizer.split(document.substr(begin, end - begin), scratch, words);
    for (const std::string_view w : words) ++counts[std::string(w)];
  };
  size_t begin = 0;
  for (const AddedMatch& m : matches) {
    count_stretch(begin, m.begin);
    begin = m.end;
  }
  count_stretch(begin, document.size());
}

// ---- The merge loop -------------------------------------------------------------------------

// A pair of adjacent tokens packed as left << 32 | right, so that comparing packs compares
// (left, right): HF's order for breaking ties.
using Pair = uint64_t;
Pair pack(int32_t left, int32_t right) { return uint64_t(uint32_t(left)) << 32 | uint32_t(right); }
int32_t left_of(Pair p) { return int32_t(p >> 32); }
int32_t right_of(Pair p) { return int32_t(p & 0xFFFFFFFFu); }

struct Candidate {
  int64_t count;  // the pair's count when queued; may be stale
  Pair pair;
};
// Max-heap order: larger count first, then the smaller pair.
struct ComesLater {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.count != b.count ? a.count < b.count : a.pair > b.pair;
  }
};

// The words as token sequences, how often each adjacent pair occurs (weighted by word counts),
// which words hold each pair, and a queue of pairs by count. Counts change only around merge
// sites, so a merge touches only the words that hold its pair.
class MergeState {
 public:
  MergeState(const WordCounts& counts, const std::array<int32_t, 256>& byte_ids) {
    words_.reserve(counts.size());
    for (const auto& [text, count] : counts) {
      Word w{std::vector<int32_t>(text.size()), count};
      for (size_t i = 0; i < text.size(); ++i) w.symbols[i] = byte_ids[static_cast<unsigned char>(text[i])];
      const auto index = uint32_t(words_.size());
      for (size_t i = 0; i + 1 < w.symbols.size(); ++i) {
        const Pair p = pack(w.symbols[i], w.symbols[i + 1]);
        pair_counts_[p] += count;
        pair_words_[p].push_back(index);
      }
      words_.push_back(std::move(w));
    }
    last_visit_.assign(words_.size(), 0);
    std::vector<Candidate> all;
    all.reserve(pair_counts_.size());
    for (const auto& [pair, count] : pair_counts_) all.push_back({count, pair});
    queue_ = Queue(ComesLater{}, std::move(all));
  }

  // The most frequent pair (smallest on ties), or nullopt when no word has two tokens left.
  std::optional<Pair> pop_best() {
    while (!queue_.empty()) {
      const Candidate top = queue_.top();
      queue_.pop();
      const int64_t now = count_of(top.pair);
      if (now == top.count) return top.pair;
      // The count fell since it was queued; a count that rose was queued again when it rose.
      if (now > 0 && now < top.count) queue_.push({now, top.pair});
    }
    return std::nullopt;
  }

  // Replaces every occurrence of `pair` by `merged` (left to right within a word, as HF).
  void merge(Pair pair, int32_t merged) {
    ++visit_;
    const auto holders = pair_words_.extract(pair);
    if (holders.empty()) return;
    std::vector<Pair> grown;
    for (const uint32_t index : holders.mapped()) {
      if (last_visit_[index] == visit_) continue;  // listed more than once
      last_visit_[index] = visit_;
      merge_in_word(index, pair, merged, grown);
    }
    std::sort(grown.begin(), grown.end());
    grown.erase(std::unique(grown.begin(), grown.end()), grown.end());
    for (const Pair p : grown) queue_.push({count_of(p), p});
  }

 private:
  struct Word {
    std::vector<int32_t> symbols;
    int64_t count;
  };
  using Queue = std::priority_queue<Candidate, std::vector<Candidate>, ComesLater>;

  int64_t count_of(Pair p) const {
    const auto it = pair_counts_.find(p);
    return it == pair_counts_.end() ? 0 : it->second;
  }

  // Pairs that gained occurrences (all hold `merged`) go to `grown`.
  void merge_in_word(uint32_t index, Pair pair, int32_t merged, std::vector<Pair>& grown) {
    Word& word = words_[index];
    std::vector<int32_t>& s = word.symbols;
    const int32_t a = left_of(pair), b = right_of(pair);
    const auto add = [&](Pair p, int64_t delta) {
      pair_counts_[p] += delta;
      if (delta > 0) {
        pair_words_[p].push_back(index);
        grown.push_back(p);
      }
    };
    // Compacts in place: s[0, out) is the merged prefix, s[i, end) not yet read.
    size_t out = 0;
    for (size_t i = 0; i < s.size(); ++out) {
      if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
        add(pair, -word.count);
        if (out > 0) {
          add(pack(s[out - 1], a), -word.count);
          add(pack(s[out - 1], merged), word.count);
        }
        if (i + 2 < s.size()) {
          add(pack(b, s[i + 2]), -word.count);
          add(pack(merged, s[i + 2]), word.count);
        }
        s[out] = merged;
        i += 2;
      } else {
        s[out] = s[i];
        ++i;
      }
    }
    s.resize(out);
  }

  std::vector<Word> words_;
  std::unordered_map<Pair, int64_t> pair_counts_;
  // Words that held each pair when it was formed (maybe more than once, maybe no longer).
  std::unordered_map<Pair, std::vector<uint32_t>> pair_words_;
  std::vector<uint32_t> last_visit_;  // per word: the last merge that looked at it
  uint32_t visit_ = 0;
  Queue queue_;
};

void check_options(const BpeTrainingOptions& o) {
  std::set<std::string> seen;
  for (const std::string& s : o.special_tokens) {
    if (s.empty()) fail("BPE training: a special token is empty");
    if (!is_valid_utf8(s)) fail("BPE training: special token '", s, "' is not valid UTF-8");
    if (!seen.insert(s).second) fail("BPE training: special token ", s, " is listed twice");
  }
  const int64_t smallest = int64_t(o.special_tokens.size()) + 256;
  if (o.vocab_size < smallest || o.vocab_size > kMaxTrainedVocab)
    fail("BPE training: vocabulary size ", o.vocab_size, " is out of range: must be in [", smallest, ", ",
         kMaxTrainedVocab, "] (", o.special_tokens.size(), " special tokens + 256 bytes at least)");
}

}  // namespace

WordCounts count_words(std::span<const std::string_view> documents, std::span<const std::string> special_tokens) {
  std::vector<AddedToken> added;
  for (size_t i = 0; i < special_tokens.size(); ++i) added.push_back({special_tokens[i], int32_t(i)});
  const AddedTokenMatcher specials(std::move(added));
  PreTokenizer pre_tokenizer;
  pre_tokenizer.set_byte_level(/*add_prefix_space=*/false, /*use_regex=*/true);

  WordCounts total;
  std::exception_ptr error;
#pragma omp parallel
  {
    WordCounts local;
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < documents.size(); ++i) {
      try {
        count_document_words(documents[i], specials, pre_tokenizer, local);
      } catch (...) {  // exceptions must not leave an OpenMP region
#pragma omp critical(bpe_count_error)
        error = std::current_exception();
      }
    }
#pragma omp critical(bpe_count_merge)
    {
      if (total.empty()) {
        total = std::move(local);
      } else {
        for (auto& [word, count] : local) total[word] += count;
      }
    }
  }
  if (error) std::rethrow_exception(error);
  return total;
}

BpeVocabulary train_bpe(const WordCounts& words, const BpeTrainingOptions& options) {
  check_options(options);
  BpeVocabulary vocab;
  vocab.special_tokens = options.special_tokens;
  vocab.tokens = options.special_tokens;

  // The 256 byte characters in code-point order, as HF sorts its initial alphabet.
  std::array<unsigned char, 256> bytes_by_char;
  for (int b = 0; b < 256; ++b) bytes_by_char[size_t(b)] = static_cast<unsigned char>(b);
  std::sort(bytes_by_char.begin(), bytes_by_char.end(),
            [](unsigned char x, unsigned char y) { return byte_to_char(x) < byte_to_char(y); });
  std::array<int32_t, 256> byte_ids{};
  for (const unsigned char b : bytes_by_char) {
    byte_ids[b] = int32_t(vocab.tokens.size());
    vocab.tokens.push_back(to_byte_level(std::string_view(reinterpret_cast<const char*>(&b), 1)));
  }

  std::unordered_map<std::string, int32_t> ids;
  for (size_t i = 0; i < vocab.tokens.size(); ++i)
    if (!ids.emplace(vocab.tokens[i], int32_t(i)).second)
      fail("BPE training: special token ", vocab.tokens[i], " is spelled like a byte token");

  MergeState state(words, byte_ids);
  const int64_t report_every = std::max<int64_t>(1, options.vocab_size / 100);
  while (int64_t(vocab.tokens.size()) < options.vocab_size) {
    const std::optional<Pair> best = state.pop_best();
    if (!best) break;
    const int32_t left = left_of(*best), right = right_of(*best);
    // Two merges can spell the same token ("ab"+"c", "a"+"bc"): it keeps its first id, as in HF.
    const auto [it, is_new] = ids.try_emplace(vocab.tokens[size_t(left)] + vocab.tokens[size_t(right)],
                                              int32_t(vocab.tokens.size()));
    if (is_new) vocab.tokens.push_back(it->first);
    vocab.merges.emplace_back(left, right);
    state.merge(*best, it->second);
    if (options.progress && int64_t(vocab.tokens.size()) % report_every == 0)
      options.progress(int64_t(vocab.tokens.size()), options.vocab_size);
  }
  return vocab;
}

std::string to_tokenizer_json(const BpeVocabulary& vocab) {
  using Json = nlohmann::ordered_json;
  const auto byte_level = [](bool add_prefix_space, bool trim_offsets) {
    return Json{{"type", "ByteLevel"},
                {"add_prefix_space", add_prefix_space},
                {"trim_offsets", trim_offsets},
                {"use_regex", true}};
  };
  Json added = Json::array();
  for (size_t i = 0; i < vocab.special_tokens.size(); ++i)
    added.push_back({{"id", i},
                     {"content", vocab.special_tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  // Tokens in id order, as HF writes them. An ordered_json object is a vector of pairs whose
  // insert searches it; the tokens are distinct, so append to the vector (linear, not quadratic).
  Json tokens = Json::object();
  auto& entries = tokens.get_ref<Json::object_t&>();
  entries.reserve(vocab.tokens.size());
  for (size_t i = 0; i < vocab.tokens.size(); ++i) entries.emplace_back(vocab.tokens[i], i);
  Json merges = Json::array();
  for (const auto& [left, right] : vocab.merges)
    merges.push_back(Json::array({vocab.tokens[size_t(left)], vocab.tokens[size_t(right)]}));

  Json model{{"type", "BPE"},
             {"dropout", nullptr},
             {"unk_token", nullptr},
             {"continuing_subword_prefix", nullptr},
             {"end_of_word_suffix", nullptr},
             {"fuse_unk", false},
             {"byte_fallback", false},
             {"ignore_merges", false},
             {"vocab", std::move(tokens)},
             {"merges", std::move(merges)}};
  const Json root{{"version", "1.0"},
                  {"truncation", nullptr},
                  {"padding", nullptr},
                  {"added_tokens", std::move(added)},
                  {"normalizer", nullptr},
                  {"pre_tokenizer", byte_level(false, true)},
                  {"post_processor", byte_level(true, false)},
                  {"decoder", byte_level(true, true)},
                  {"model", std::move(model)}};
  return root.dump(2) + "\n";
}

}  // namespace mambacpp::text
