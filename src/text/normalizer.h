// Unicode normalizers of tokenizer.json ("NFC", "NFD", "NFKC", "NFKD", or a Sequence of them),
// through utf8proc.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace mambacpp::text {

enum class NormalForm { NFC, NFD, NFKC, NFKD };

class Normalizer {
 public:
  void add(NormalForm form) { forms_.push_back(form); }
  bool empty() const { return forms_.empty(); }

  // `text` (valid UTF-8) normalized; the result views `text` or `storage`.
  std::string_view apply(std::string_view text, std::string& storage) const;

 private:
  std::vector<NormalForm> forms_;
};

}  // namespace mambacpp::text
