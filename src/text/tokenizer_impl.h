// What a parsed tokenizer.json becomes (tokenizer_json.cpp builds it, tokenizer.cpp runs it).
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "text/added_tokens.h"
#include "text/bpe.h"
#include "text/normalizer.h"
#include "text/pre_tokenizer.h"
#include "text/tokenizer.h"

namespace mambacpp {

struct Tokenizer::Impl {
  std::string name;  // for error messages

  // Encoding, in HF's order: added tokens matched on the raw text, the normalizer, added
  // tokens matched on the normalized text, pre-tokenizer, BPE, post-processor.
  text::AddedTokenMatcher raw_added;
  text::Normalizer normalizer;
  text::AddedTokenMatcher normalized_added;
  text::PreTokenizer pre_tokenizer;
  std::unique_ptr<text::BpeModel> bpe;
  std::vector<int32_t> prefix_ids, suffix_ids;  // from a TemplateProcessing post-processor

  // Decoding: the bytes of id i are token_bytes[token_offsets[i], token_offsets[i + 1]).
  std::string token_bytes;
  std::vector<uint32_t> token_offsets;  // vocab_size + 1 entries
  std::vector<bool> id_known;           // false for ids no token has (holes in the vocab)
  // Token strings (vocab spelling, or added-token content) -> id; added tokens first, as HF.
  std::unordered_map<std::string, int32_t> added_ids, vocab_ids;
};

// Builds the tokenizer from tokenizer.json text; errors name `name` and the field.
std::unique_ptr<Tokenizer::Impl> parse_tokenizer_json(std::string_view json, const std::string& name);

}  // namespace mambacpp
