#include "serve/saved_state.h"

#include <cstring>
#include <fstream>
#include <random>

#include "core/error.h"
#include "io/atomic_file.h"

namespace mambacpp::serve {

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'M', 'C', 'P', 'P', 'S', 'T', '0', '1'};
constexpr size_t kModelTypeBytes = 16;  // model_type, zero-padded

// The fixed-size header, in file order (host byte order: states are for this server's machine).
struct Header {
  char magic[8];
  char model_type[kModelTypeBytes];
  ModelShape shape;
  uint64_t weights_fingerprint;
  int64_t token_count;
};

Header header_for(const ModelSignature& s, int64_t token_count) {
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  std::memcpy(h.model_type, s.model_type.data(), std::min(s.model_type.size(), kModelTypeBytes));
  h.shape = s.shape;
  h.weights_fingerprint = s.weights_fingerprint;
  h.token_count = token_count;
  return h;
}

// FNV-1a over bytes.
uint64_t fingerprint(const void* data, size_t size) {
  uint64_t h = 0xcbf29ce484222325ull;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

// The header's shape against this model's, naming the first field that differs.
void check_shape(const Header& h, const ModelSignature& s, std::string_view what) {
  const std::string model_type(h.model_type, strnlen(h.model_type, kModelTypeBytes));
  if (model_type != s.model_type)
    fail(what, " was saved with a ", model_type, " model; this server runs a ", s.model_type, " model");
  const std::pair<const char*, int64_t ModelShape::*> fields[] = {
      {"vocab_size", &ModelShape::vocab_size}, {"d_model", &ModelShape::d_model}, {"n_layer", &ModelShape::n_layer},
      {"d_inner", &ModelShape::d_inner},       {"d_state", &ModelShape::d_state}, {"d_conv", &ModelShape::d_conv},
      {"dt_rank", &ModelShape::dt_rank}};
  for (const auto& [name, field] : fields)
    if (h.shape.*field != s.shape.*field)
      fail(what, " was saved with a model of ", name, " ", h.shape.*field, "; this server's model has ",
           s.shape.*field);
  if (h.weights_fingerprint != s.weights_fingerprint)
    fail(what, " was saved with other weights of the same shape (a different checkpoint)");
}

// Calls visit(pointer, floats) for each layer's conv state, then its SSM state: the file's order.
template <class State, class Visit>
void for_each_state_block(State& state, const ModelSignature& s, Visit visit) {
  const ModelShape& m = s.shape;
  const size_t conv = size_t(m.d_inner * (m.d_conv - 1)), ssm = size_t(m.d_inner * m.d_state);
  for (int l = 0; l < int(m.n_layer); ++l) {
    visit(state.conv(l), conv);
    visit(state.ssm(l), ssm);
  }
}

}  // namespace

ModelSignature model_signature(const MambaModel& model) {
  const MambaConfig& c = model.config();
  ModelSignature s;
  s.model_type = c.model_type;
  s.shape = {c.vocab_size, c.d_model, c.n_layer, c.d_inner, c.d_state, c.d_conv, c.dt_rank};
  const Parameters& p = model.parameters();
  s.weights_fingerprint = fingerprint(p.region(ParamKind::Vector),
                                      size_t(p.table().region_elements(ParamKind::Vector)) * sizeof(float));
  return s;
}

bool is_state_id(std::string_view id) {
  if (id.size() != 35 || id.substr(0, 3) != "st-") return false;
  for (char ch : id.substr(3))
    if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) return false;
  return true;
}

std::string random_hex(int bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::random_device device;
  std::string out;
  for (int i = 0; i < bytes; ++i) {
    const unsigned byte = device() & 0xffu;
    out += kDigits[byte >> 4];
    out += kDigits[byte & 15u];
  }
  return out;
}

std::string new_state_id() { return "st-" + random_hex(16); }

void write_saved_state(const fs::path& file, const SavedState& saved, const ModelSignature& signature) {
  MAMBACPP_CHECK(!saved.tokens.empty() && saved.state.batch() == 1);
  const Header header = header_for(signature, int64_t(saved.tokens.size()));
  AtomicFile out(file);
  out.write(&header, sizeof header);
  out.write(saved.tokens.data(), saved.tokens.size() * sizeof(int32_t));
  for_each_state_block(saved.state, signature, [&](const float* block, size_t n) { out.write(block, n * sizeof(float)); });
  out.commit();
}

SavedState read_saved_state(const fs::path& file, const MambaModel& model, const ModelSignature& signature,
                            std::string_view what) {
  const MambaConfig& c = model.config();
  std::error_code ec;
  const uintmax_t size = fs::file_size(file, ec);
  if (ec) fail(what, " does not exist (unknown id, or saved by another server)");
  std::ifstream in(file, std::ios::binary);
  Header h{};
  if (!in || size < sizeof h || !in.read(reinterpret_cast<char*>(&h), sizeof h))
    fail(what, " is damaged: its file is shorter than a header");
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0) fail(what, " is not a mambacpp state file");
  check_shape(h, signature, what);
  SavedState saved;
  saved.state = model.new_state(1);
  const uintmax_t state_bytes = saved.state.bytes();
  if (h.token_count < 1 || uintmax_t(h.token_count) > (size - sizeof h) / sizeof(int32_t) ||
      size != sizeof h + uintmax_t(h.token_count) * sizeof(int32_t) + state_bytes)
    fail(what, " is damaged: its size does not match its ", h.token_count, " tokens and the model's state");
  saved.tokens.resize(size_t(h.token_count));
  in.read(reinterpret_cast<char*>(saved.tokens.data()), std::streamsize(saved.tokens.size() * sizeof(int32_t)));
  for_each_state_block(saved.state, signature, [&](float* block, size_t n) {
    in.read(reinterpret_cast<char*>(block), std::streamsize(n * sizeof(float)));
  });
  if (!in) fail(what, " is damaged: it could not be read whole");
  for (size_t i = 0; i < saved.tokens.size(); ++i)
    if (saved.tokens[i] < 0 || saved.tokens[i] >= c.vocab_size)
      fail(what, " is damaged: token ", i, " (id ", saved.tokens[i], ") is outside the vocabulary");
  return saved;
}

}  // namespace mambacpp::serve
