// Hugging Face tokenizer.json, byte-level BPE (GPT-2 / GPT-NeoX family), run exactly as HF
// tokenizers runs it: optional NFC normalizer, added/special tokens split out first, the
// ByteLevel pre-tokenizer (its regex, add_prefix_space), BPE merges by rank, ByteLevel decoder.
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
  static Tokenizer from_file(const std::filesystem::path& path);
  // `name` is used in error messages.
  static Tokenizer from_json_text(std::string_view json, const std::string& name);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  std::vector<int32_t> encode(std::string_view text) const;
  // Exact text; special tokens kept. Bytes of an incomplete UTF-8 sequence are emitted as they
  // are (use StreamDecoder for streaming).
  std::string decode(const std::vector<int32_t>& ids) const;
  // The bytes one token stands for (after the ByteLevel mapping is undone).
  std::string token_bytes(int32_t id) const;
  int64_t vocab_size() const;  // largest id + 1
  std::optional<int32_t> token_to_id(std::string_view token) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
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
