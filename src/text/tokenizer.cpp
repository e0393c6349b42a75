#include "text/tokenizer.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "core/error.h"
#include "text/tokenizer_impl.h"
#include "text/utf8.h"

namespace mambacpp {
namespace {

// Calls on_text for the text between added tokens and on_token for each added token, in order.
template <class OnText, class OnToken>
void split_on_added(const text::AddedTokenMatcher& matcher, std::string_view text,
                    OnText&& on_text, OnToken&& on_token) {
  std::vector<text::AddedMatch> matches;
  matcher.find(text, matches);
  size_t taken = 0;
  for (const text::AddedMatch& m : matches) {
    if (taken < m.begin) on_text(text.substr(taken, m.begin - taken));
    on_token(m.id);
    taken = m.end;
  }
  if (taken < text.size()) on_text(text.substr(taken));
}

// One encode call: the pipeline of Tokenizer::Impl with its working memory.
class Encoder {
 public:
  Encoder(const Tokenizer::Impl& impl, std::vector<int32_t>& ids) : impl_(impl), ids_(ids) {}

  void encode(std::string_view text) {
    split_on_added(impl_.raw_added, text, [this](std::string_view t) { encode_segment(t); },
                   [this](int32_t id) { ids_.push_back(id); });
  }

 private:
  // Text between two raw-matched added tokens: normalized on its own, as HF does.
  void encode_segment(std::string_view segment) {
    std::string storage;
    const std::string_view normalized = impl_.normalizer.apply(segment, storage);
    split_on_added(impl_.normalized_added, normalized,
                   [this](std::string_view t) { encode_words(t); },
                   [this](int32_t id) { ids_.push_back(id); });
  }

  void encode_words(std::string_view piece) {
    words_.clear();
    scratch_.owned.clear();
    impl_.pre_tokenizer.split(piece, scratch_, words_);
    for (const std::string_view word : words_) impl_.bpe->encode_word(word, ids_);
  }

  const Tokenizer::Impl& impl_;
  std::vector<int32_t>& ids_;
  text::PreTokenizerScratch scratch_;
  std::vector<std::string_view> words_;
};

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open: ", std::strerror(errno));
  const std::string json{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) fail(path.string(), ": cannot read: ", std::strerror(errno));
  return from_json_text(json, path.string());
}

Tokenizer Tokenizer::from_json_text(std::string_view json, const std::string& name) {
  return Tokenizer(parse_tokenizer_json(json, name));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::string repaired;
  if (!text::is_valid_utf8(text)) {
    repaired = text::replace_invalid_utf8(text);
    text = repaired;
  }
  std::vector<int32_t> ids = impl_->prefix_ids;
  ids.reserve(text.size() / 3 + ids.size() + impl_->suffix_ids.size());
  Encoder(*impl_, ids).encode(text);
  ids.insert(ids.end(), impl_->suffix_ids.begin(), impl_->suffix_ids.end());
  return ids;
}

std::string_view Tokenizer::checked_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !impl_->id_known[size_t(id)]) {
    fail(impl_->name, ": token id ", id, " is not in the vocabulary (ids 0..", vocab_size() - 1,
         ")");
  }
  const uint32_t begin = impl_->token_offsets[size_t(id)];
  return std::string_view(impl_->token_bytes).substr(begin, impl_->token_offsets[size_t(id) + 1] - begin);
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (const int32_t id : ids) out += checked_bytes(id);
  return out;
}

std::string Tokenizer::token_bytes(int32_t id) const { return std::string(checked_bytes(id)); }

int64_t Tokenizer::vocab_size() const { return int64_t(impl_->id_known.size()); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  for (const auto* map : {&impl_->added_ids, &impl_->vocab_ids}) {
    const auto it = map->find(std::string(token));
    if (it != map->end()) return it->second;
  }
  return std::nullopt;
}

std::string StreamDecoder::push(int32_t id) {
  pending_ += tok_->checked_bytes(id);
  const size_t ready = pending_.size() - text::unfinished_suffix_length(pending_);
  std::string out = pending_.substr(0, ready);
  pending_.erase(0, ready);
  return out;
}

std::string StreamDecoder::flush() { return std::exchange(pending_, std::string()); }

}  // namespace mambacpp
