// Training a byte-level BPE the way HF tokenizers' BpeTrainer does with the ByteLevel
// pre-tokenizer (no prefix space): the corpus is cut into words exactly as encoding cuts it,
// every word starts as the byte-level characters of its bytes, and the most frequent adjacent
// pair of tokens is merged, again and again, until the vocabulary is full. Ids: the special
// tokens first, then the 256 byte characters in code-point order, then each merge's new token,
// as HF numbers them; ties between pairs of equal count go to the pair of smaller ids, as in HF.
// The result is a tokenizer.json that HF tokenizers and our Tokenizer both load.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mambacpp::text {

// Distinct words (raw bytes) and how often each occurs.
using WordCounts = std::unordered_map<std::string, int64_t>;

// The words of `documents` as encoding cuts them: occurrences of `special_tokens` are cut out
// first (they are never part of a word), invalid UTF-8 becomes U+FFFD as encoding repairs it,
// then the GPT-2 pre-tokenizer splits the rest. Documents are counted in parallel
// (core/threads.h sets how many threads).
WordCounts count_words(std::span<const std::string_view> documents, std::span<const std::string> special_tokens);

inline constexpr int64_t kMaxTrainedVocab = int64_t(1) << 20;

struct BpeTrainingOptions {
  int64_t vocab_size = 8192;  // the special tokens and the 256 byte tokens included
  std::vector<std::string> special_tokens = {"<|endoftext|>", "<|padding|>"};
  // Called now and then during the merges with (tokens so far, vocab_size).
  std::function<void(int64_t, int64_t)> progress;
};

struct BpeVocabulary {
  std::vector<std::string> special_tokens;  // ids 0, 1, ...
  // Every token by id as tokenizer.json spells it: special tokens as they are, the others in
  // byte-level characters (e.g. "Ġthe").
  std::vector<std::string> tokens;
  std::vector<std::pair<int32_t, int32_t>> merges;  // (left id, right id), first merge first
};

// BadInput unless special tokens + 256 <= vocab_size <= kMaxTrainedVocab and the special tokens
// are distinct and non-empty. The vocabulary stops short of vocab_size when no adjacent pair is
// left in any word (a corpus too small for it).
BpeVocabulary train_bpe(const WordCounts& words, const BpeTrainingOptions& options);

// tokenizer.json text in the layout HF tokenizers writes for a byte-level BPE: the special
// tokens as added tokens, no normalizer, ByteLevel pre-tokenizer (no prefix space),
// post-processor and decoder, and the BPE model with its vocab and merges.
std::string to_tokenizer_json(const BpeVocabulary& vocab);

}  // namespace mambacpp::text
