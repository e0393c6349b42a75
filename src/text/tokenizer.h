// Hugging Face tokenizer.json, byte-level BPE (GPT-2 / GPT-NeoX family), run exactly as HF
// tokenizers runs it: optional NFC normalizer, added/special tokens split out first, the
// ByteLevel pre-tokenizer (its regex, add_prefix_space), BPE merges by rank, ByteLevel decoder.
// docs/TOKENIZER.md lists what is supported and where we differ from HF.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mambacpp {

class Tokenizer {
 public:
  // Errors (a missing file, bad JSON, a missing or ill-typed field, an unsupported component)
  // are BadInput naming the file and the field.
  static Tokenizer from_file(const std::filesystem::path& path);
  // `name` is used in error messages.
  static Tokenizer from_json_text(std::string_view json, const std::string& name);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // The ids HF tokenizers gives for `text` (with its default add_special_tokens=true, i.e. with
  // what a TemplateProcessing post-processor adds). Invalid UTF-8 is first repaired the way
  // Rust's String::from_utf8_lossy does it (each maximal ill-formed subsequence becomes U+FFFD),
  // so the ids are HF's for that repaired text. Thread-safe.
  std::vector<int32_t> encode(std::string_view text) const;
  // Exact text; special tokens kept. Bytes of an incomplete UTF-8 sequence are emitted as they
  // are (HF would write U+FFFD there; use StreamDecoder for streaming). BadInput for an id
  // outside the vocabulary.
  std::string decode(const std::vector<int32_t>& ids) const;
  // The bytes one token stands for (after the ByteLevel mapping is undone).
  std::string token_bytes(int32_t id) const;
  int64_t vocab_size() const;  // largest id + 1
  // The id of a token as tokenizer.json spells it (vocab entries in byte-level characters,
  // e.g. "Ġthe"; added tokens by their content).
  std::optional<int32_t> token_to_id(std::string_view token) const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  friend class StreamDecoder;
  std::string_view checked_bytes(int32_t id) const;
  std::unique_ptr<Impl> impl_;
};

// Turns a stream of token ids into text that never ends in half a UTF-8 character: bytes of an
// unfinished character are held back until it completes.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(&tok) {}
  std::string push(int32_t id);  // complete characters ready now
  std::string flush();           // whatever is left (possibly invalid UTF-8)

 private:
  const Tokenizer* tok_;
  std::string pending_;
};

}  // namespace mambacpp
