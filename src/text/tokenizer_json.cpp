// tokenizer.json -> Tokenizer::Impl. Every check names the file and the field at fault:
// "tokenizer.json: model.merges[12]: \"ab\" is not in model.vocab".
#include <algorithm>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "text/byte_level.h"
#include "text/tokenizer_impl.h"
#include "text/utf8.h"

namespace mambacpp {
namespace {

using nlohmann::json;
using text::AddedToken;

// Token ids are dense indices into the decode table; this bounds it (the largest vocabularies
// in use have about 2^18 tokens).
constexpr int64_t kMaxTokenId = (int64_t(1) << 24) - 1;
constexpr int kMaxJsonDepth = 64;

std::string quoted(const std::string& s) {
  return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

// A JSON value and where it sits in the file, for messages: "<file>: <path>: <what>".
class Field {
 public:
  Field(const json& value, const std::string& file, std::string path)
      : v_(&value), file_(&file), path_(std::move(path)) {}

  const json& value() const { return *v_; }

  // "<file>: <path>", the prefix of every message about this value.
  std::string where() const { return cat(*file_, ": ", path_.empty() ? "top level" : path_); }
  template <class... Args>
  [[noreturn]] void error(Args&&... args) const {
    fail(where(), ": ", std::forward<Args>(args)...);
  }
  // An error about member `key`, which may be absent.
  template <class... Args>
  [[noreturn]] void error_at(const std::string& key, Args&&... args) const {
    Field(*v_, *file_, child_path(key)).error(std::forward<Args>(args)...);
  }

  // The member `key`; nullopt if absent or null.
  std::optional<Field> find(const std::string& key) const {
    expect(v_->is_object(), "an object");
    const auto it = v_->find(key);
    if (it == v_->end() || it->is_null()) return std::nullopt;
    return Field(*it, *file_, child_path(key));
  }
  Field require(const std::string& key) const {
    if (auto f = find(key)) return *f;
    error_at(key, "missing");
  }
  size_t size() const {
    expect(v_->is_array(), "an array");
    return v_->size();
  }
  Field operator[](size_t i) const {
    return Field((*v_)[i], *file_, cat(path_, "[", i, "]"));
  }
  // Member `key` of an object whose keys are data (vocab tokens, special-token names).
  Field entry(const std::string& key, const json& value) const {
    return Field(value, *file_, cat(path_, "[", quoted(key), "]"));
  }

  const std::string& string() const {
    expect(v_->is_string(), "a string");
    return v_->get_ref<const std::string&>();
  }
  bool boolean() const {
    expect(v_->is_boolean(), "true or false");
    return v_->get<bool>();
  }
  int64_t integer(int64_t lo, int64_t hi) const {
    expect(v_->is_number_integer(), "an integer");
    const bool in_range = v_->is_number_unsigned()
                              ? v_->get<uint64_t>() <= uint64_t(hi)
                              : v_->get<int64_t>() >= lo && v_->get<int64_t>() <= hi;
    if (!in_range) error("expected an integer in [", lo, ", ", hi, "], found ", excerpt());
    return v_->get<int64_t>();
  }
  double number() const {
    expect(v_->is_number(), "a number");
    return v_->get<double>();
  }
  // Optional members with a default.
  bool flag(const std::string& key, bool fallback) const {
    const auto f = find(key);
    return f ? f->boolean() : fallback;
  }
  // The "type" of a component object.
  std::string type() const { return require("type").string(); }

 private:
  std::string child_path(const std::string& key) const {
    return path_.empty() ? key : cat(path_, ".", key);
  }
  std::string excerpt() const {
    std::string s = v_->dump(-1, ' ', false, json::error_handler_t::replace);
    return s.size() > 60 ? s.substr(0, 57) + "..." : s;
  }
  void expect(bool ok, const char* what) const {
    if (!ok) error("expected ", what, ", found ", excerpt());
  }

  const json* v_;
  const std::string* file_;
  std::string path_;
};

json parse(std::string_view text, const std::string& name) {
  const json::parser_callback_t limit_depth = [&name](int depth, json::parse_event_t, json&) {
    if (depth > kMaxJsonDepth) fail(name, ": JSON nested deeper than ", kMaxJsonDepth, " levels");
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), limit_depth);
  } catch (const json::exception& e) {
    fail(name, ": not valid JSON: ", e.what());
  }
}

// ---- model ----------------------------------------------------------------------------------

struct Vocab {
  std::unordered_map<std::string, int32_t> ids;
  int64_t count = 0;
  int64_t max_id = -1;
};

Vocab parse_vocab(const Field& model) {
  const Field vocab = model.require("vocab");
  if (!vocab.value().is_object()) vocab.error("expected an object of token -> id");
  Vocab v;
  std::unordered_map<int32_t, const std::string*> token_of_id;
  for (const auto& [token, value] : vocab.value().items()) {
    const Field id_field = vocab.entry(token, value);
    const auto id = int32_t(id_field.integer(0, kMaxTokenId));
    const auto [it, fresh] = v.ids.emplace(token, id);
    const auto [prev, unique] = token_of_id.emplace(id, &it->first);
    if (!unique) id_field.error("id ", id, " is also the id of ", quoted(*prev->second));
    v.max_id = std::max<int64_t>(v.max_id, id);
  }
  v.count = int64_t(v.ids.size());
  return v;
}

// One merge, "a b" or ["a", "b"]; nullopt for a "#version" line.
std::optional<std::pair<std::string, std::string>> merge_pair(const Field& f) {
  if (f.value().is_string()) {
    const std::string& line = f.string();
    if (line.starts_with("#version")) return std::nullopt;
    const size_t space = line.find(' ');
    if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
      f.error("expected two tokens separated by one space, found ", quoted(line));
    }
    return std::make_pair(line.substr(0, space), line.substr(space + 1));
  }
  if (f.value().is_array()) {
    if (f.size() != 2) f.error("expected a pair of tokens, found ", f.size(), " elements");
    return std::make_pair(f[0].string(), f[1].string());
  }
  f.error("expected \"a b\" or [\"a\", \"b\"]");
}

text::MergeTable parse_merges(const Field& model, const Vocab& vocab) {
  const Field merges = model.require("merges");
  text::MergeTable table(merges.size());
  uint32_t rank = 0;
  for (size_t i = 0; i < merges.size(); ++i) {
    const Field f = merges[i];
    const auto pair = merge_pair(f);
    if (!pair) continue;
    const auto id_of = [&](const std::string& token) {
      const auto it = vocab.ids.find(token);
      if (it == vocab.ids.end()) f.error(quoted(token), " is not in model.vocab");
      return it->second;
    };
    const int32_t left = id_of(pair->first), right = id_of(pair->second);
    table.insert(left, right, {rank++, id_of(pair->first + pair->second)});
  }
  return table;
}

// Options of HF's BPE that we do not implement must be off.
void reject_unsupported_bpe_options(const Field& model) {
  if (const auto f = model.find("dropout"); f && f->number() != 0.0) {
    f->error("BPE dropout is not supported (encoding must be deterministic)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const auto f = model.find(key); f && !f->string().empty()) {
      f->error("not supported for byte-level BPE (expected null)");
    }
  }
  if (model.flag("byte_fallback", false)) {
    model.require("byte_fallback").error("byte_fallback is not supported for byte-level BPE");
  }
}

std::unique_ptr<text::BpeModel> build_bpe(const Field& model, const Vocab& vocab) {
  if (const auto type = model.find("type"); type && type->string() != "BPE") {
    type->error(quoted(type->string()), " is not supported (only BPE)");
  }
  reject_unsupported_bpe_options(model);
  text::BpeOptions options;
  if (const auto unk = model.find("unk_token")) {
    const auto it = vocab.ids.find(unk->string());
    if (it == vocab.ids.end()) unk->error(quoted(unk->string()), " is not in model.vocab");
    options.unk_id = it->second;
  }
  options.fuse_unk = model.flag("fuse_unk", false);
  options.ignore_merges = model.flag("ignore_merges", false);
  if (options.ignore_merges) {
    for (const auto& [token, id] : vocab.ids) {
      if (auto bytes = text::from_byte_level(token)) options.whole_words.emplace(*bytes, id);
    }
  }
  std::array<int32_t, 256> byte_ids;
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    text::append_utf8(ch, text::byte_to_char(static_cast<unsigned char>(b)));
    const auto it = vocab.ids.find(ch);
    byte_ids[size_t(b)] = it == vocab.ids.end() ? -1 : it->second;
  }
  return std::make_unique<text::BpeModel>(byte_ids, parse_merges(model, vocab), std::move(options));
}

// ---- normalizer -----------------------------------------------------------------------------

void parse_normalizer(const Field& f, text::Normalizer& normalizer) {
  static const std::map<std::string, text::NormalForm> forms = {
      {"NFC", text::NormalForm::NFC},
      {"NFD", text::NormalForm::NFD},
      {"NFKC", text::NormalForm::NFKC},
      {"NFKD", text::NormalForm::NFKD}};
  const std::string type = f.type();
  if (type == "Sequence") {
    const Field items = f.require("normalizers");
    for (size_t i = 0; i < items.size(); ++i) parse_normalizer(items[i], normalizer);
  } else if (const auto it = forms.find(type); it != forms.end()) {
    normalizer.add(it->second);
  } else {
    f.error("normalizer type ", quoted(type), " is not supported (NFC, NFD, NFKC, NFKD, Sequence)");
  }
}

// ---- added tokens ---------------------------------------------------------------------------

struct ParsedAddedToken {
  AddedToken token;
  std::string content;
  std::string decoded_form;  // what the ByteLevel decoder is given for this id
  bool normalized = false;
};

// HF's AddedVocabulary::add_tokens: a token whose content is already a token keeps that id,
// the others get ids from the vocab size up, in file order (the "id" field is only checked).
std::vector<ParsedAddedToken> parse_added_tokens(const Field& top, const Vocab& vocab,
                                                 const text::Normalizer& normalizer,
                                                 std::unordered_map<std::string, int32_t>& ids) {
  std::vector<ParsedAddedToken> tokens;
  const auto list = top.find("added_tokens");
  if (!list) return tokens;
  std::unordered_map<int32_t, size_t> index_of_id;
  int64_t next_id = vocab.count;
  for (size_t i = 0; i < list->size(); ++i) {
    const Field f = (*list)[i];
    const std::string& content = f.require("content").string();
    f.require("id").integer(0, kMaxTokenId);
    const bool special = f.flag("special", false);
    if (content.empty()) continue;  // HF ignores them
    ParsedAddedToken t;
    t.content = content;
    t.token.single_word = f.flag("single_word", false);
    t.token.lstrip = f.flag("lstrip", false);
    t.token.rstrip = f.flag("rstrip", false);
    t.normalized = f.flag("normalized", !special);
    if (const auto it = ids.find(content); it != ids.end()) {
      t.token.id = it->second;
    } else if (const auto v = vocab.ids.find(content); v != vocab.ids.end()) {
      t.token.id = v->second;
    } else {
      if (next_id > kMaxTokenId) f.error("too many tokens (ids above ", kMaxTokenId, ")");
      t.token.id = int32_t(next_id++);
    }
    ids[content] = t.token.id;
    std::string storage;
    t.decoded_form = t.normalized ? std::string(normalizer.apply(content, storage)) : content;
    t.token.pattern = t.decoded_form;
    const auto [slot, fresh] = index_of_id.emplace(t.token.id, tokens.size());
    if (fresh) {
      tokens.push_back(std::move(t));
    } else if (tokens[slot->second].content == content) {
      tokens[slot->second] = std::move(t);  // a later entry for the same token replaces it
    } else {
      f.error("gets id ", t.token.id, ", the id of added token ", quoted(tokens[slot->second].content));
    }
  }
  return tokens;
}

// ---- pre-tokenizer --------------------------------------------------------------------------

text::SplitStep parse_split(const Field& f) {
  text::SplitStep step;
  const Field pattern = f.require("pattern");
  if (const auto regex = pattern.find("Regex")) {
    if (regex->string() != text::kGpt2Pattern) {
      step.regex = std::make_shared<text::Regex>(regex->string(), false, regex->where());
    }
  } else if (const auto literal = pattern.find("String")) {
    step.regex = std::make_shared<text::Regex>(literal->string(), true, literal->where());
  } else {
    pattern.error("expected {\"Regex\": ...} or {\"String\": ...}");
  }
  static const std::map<std::string, text::SplitBehavior> behaviors = {
      {"Removed", text::SplitBehavior::Removed},
      {"Isolated", text::SplitBehavior::Isolated},
      {"MergedWithPrevious", text::SplitBehavior::MergedWithPrevious},
      {"MergedWithNext", text::SplitBehavior::MergedWithNext},
      {"Contiguous", text::SplitBehavior::Contiguous}};
  const Field behavior = f.require("behavior");
  const auto it = behaviors.find(behavior.string());
  if (it == behaviors.end()) behavior.error("unknown split behavior ", quoted(behavior.string()));
  step.behavior = it->second;
  step.invert = f.flag("invert", false);
  return step;
}

void parse_byte_level(const Field& f, text::PreTokenizer& pre_tokenizer) {
  pre_tokenizer.set_byte_level(f.flag("add_prefix_space", true), f.flag("use_regex", true));
}

// ByteLevel, or a Sequence of Split steps ending with ByteLevel (as GPT-NeoX-like files of
// newer models have).
void parse_pre_tokenizer(const Field& top, text::PreTokenizer& pre_tokenizer) {
  const auto f = top.find("pre_tokenizer");
  if (!f) top.error_at("pre_tokenizer", "missing: byte-level BPE needs a ByteLevel pre-tokenizer");
  const std::string type = f->type();
  if (type == "ByteLevel") return parse_byte_level(*f, pre_tokenizer);
  if (type != "Sequence") {
    f->error("pre-tokenizer type ", quoted(type), " is not supported (ByteLevel, Sequence)");
  }
  const Field steps = f->require("pretokenizers");
  if (steps.size() == 0) steps.error("empty: byte-level BPE needs a ByteLevel pre-tokenizer");
  for (size_t i = 0; i < steps.size(); ++i) {
    const Field step = steps[i];
    const std::string step_type = step.type();
    const bool last = i + 1 == steps.size();
    if (!last && step_type == "Split") {
      pre_tokenizer.add_split(parse_split(step));
    } else if (last && step_type == "ByteLevel") {
      parse_byte_level(step, pre_tokenizer);
    } else {
      step.error("only Split steps followed by one ByteLevel are supported, found ",
                 quoted(step_type));
    }
  }
}

// ---- post-processor and decoder -------------------------------------------------------------

void parse_template(const Field& f, Tokenizer::Impl& impl) {
  const Field single = f.require("single");
  const Field special = f.require("special_tokens");
  bool seen_sequence = false;
  for (size_t i = 0; i < single.size(); ++i) {
    const Field item = single[i];
    if (const auto seq = item.find("Sequence")) {
      const Field id = seq->require("id");
      if (id.string() != "A" || seen_sequence) id.error("a single-sequence template has one $A");
      seen_sequence = true;
    } else if (const auto tok = item.find("SpecialToken")) {
      const std::string& name = tok->require("id").string();
      const auto entry = special.find(name);
      if (!entry) tok->error(quoted(name), " is not in post_processor.special_tokens");
      const Field ids = entry->require("ids");
      auto& target = seen_sequence ? impl.suffix_ids : impl.prefix_ids;
      for (size_t k = 0; k < ids.size(); ++k) target.push_back(int32_t(ids[k].integer(0, kMaxTokenId)));
    } else {
      item.error("expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
    }
  }
  if (!seen_sequence) single.error("the template has no $A");
}

void parse_post_processor(const Field& f, Tokenizer::Impl& impl) {
  const std::string type = f.type();
  if (type == "ByteLevel") return;  // only trims offsets, which we do not compute
  if (type == "TemplateProcessing") return parse_template(f, impl);
  if (type == "Sequence") {
    const Field items = f.require("processors");
    for (size_t i = 0; i < items.size(); ++i) parse_post_processor(items[i], impl);
    return;
  }
  f.error("post-processor type ", quoted(type), " is not supported (ByteLevel, TemplateProcessing, Sequence)");
}

void check_decoder(const Field& top) {
  const auto f = top.find("decoder");
  if (!f) top.error_at("decoder", "missing: byte-level BPE needs the ByteLevel decoder");
  if (const std::string type = f->type(); type != "ByteLevel") {
    f->error("decoder type ", quoted(type), " is not supported (ByteLevel)");
  }
}

// ---- decode table ---------------------------------------------------------------------------

// HF's ByteLevel decoder: a token whose characters all come from the byte mapping gives those
// bytes; any other token gives its own UTF-8 text.
std::string decoded_bytes(const std::string& token) {
  auto bytes = text::from_byte_level(token);
  return bytes ? std::move(*bytes) : token;
}

void build_decode_table(const Vocab& vocab, const std::vector<ParsedAddedToken>& added,
                        Tokenizer::Impl& impl) {
  std::vector<std::pair<int32_t, std::string>> entries;  // (id, bytes)
  entries.reserve(vocab.ids.size() + added.size());
  for (const auto& [token, id] : vocab.ids) entries.emplace_back(id, decoded_bytes(token));
  for (const auto& t : added) entries.emplace_back(t.token.id, decoded_bytes(t.decoded_form));
  // Stable: for an id both in the vocab and added, the added token (later) wins, as in HF.
  std::stable_sort(entries.begin(), entries.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  const size_t size = entries.empty() ? 0 : size_t(entries.back().first) + 1;
  impl.id_known.assign(size, false);
  impl.token_offsets.assign(size + 1, 0);
  size_t next = 0;  // entries[next] is the first entry of the id being filled
  for (size_t id = 0; id < size; ++id) {
    size_t last = next;
    while (last < entries.size() && size_t(entries[last].first) == id) ++last;
    if (last > next) {
      impl.token_bytes += entries[last - 1].second;
      impl.id_known[id] = true;
    }
    if (impl.token_bytes.size() > UINT32_MAX) fail(impl.name, ": the vocabulary is too large");
    impl.token_offsets[id + 1] = uint32_t(impl.token_bytes.size());
    next = last;
  }
}

void check_template_ids(const Field& top, const Tokenizer::Impl& impl) {
  for (const auto* ids : {&impl.prefix_ids, &impl.suffix_ids}) {
    for (const int32_t id : *ids) {
      if (size_t(id) >= impl.id_known.size() || !impl.id_known[size_t(id)]) {
        top.require("post_processor").error("special token id ", id, " is not in the vocabulary");
      }
    }
  }
}

}  // namespace

std::unique_ptr<Tokenizer::Impl> parse_tokenizer_json(std::string_view json_text,
                                                      const std::string& name) {
  const json root = parse(json_text, name);
  const Field top(root, name, "");
  if (!root.is_object()) top.error("expected a JSON object");
  if (const auto version = top.find("version"); version && version->string() != "1.0") {
    version->error("unknown tokenizer.json version ", quoted(version->string()), " (expected \"1.0\")");
  }
  auto impl = std::make_unique<Tokenizer::Impl>();
  impl->name = name;

  const Field model = top.require("model");
  const Vocab vocab = parse_vocab(model);
  impl->bpe = build_bpe(model, vocab);
  impl->vocab_ids = vocab.ids;

  if (const auto f = top.find("normalizer")) parse_normalizer(*f, impl->normalizer);
  const auto added = parse_added_tokens(top, vocab, impl->normalizer, impl->added_ids);
  std::vector<AddedToken> raw, normalized;
  for (const auto& t : added) (t.normalized ? normalized : raw).push_back(t.token);
  impl->raw_added = text::AddedTokenMatcher(std::move(raw));
  impl->normalized_added = text::AddedTokenMatcher(std::move(normalized));

  parse_pre_tokenizer(top, impl->pre_tokenizer);
  if (const auto f = top.find("post_processor")) parse_post_processor(*f, *impl);
  check_decoder(top);

  build_decode_table(vocab, added, *impl);
  check_template_ids(top, *impl);
  return impl;
}

}  // namespace mambacpp
