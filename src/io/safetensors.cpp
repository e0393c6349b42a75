#include "io/safetensors.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "core/mapped_file.h"
#include "io/atomic_file.h"
#include "io/json_fields.h"

namespace mambacpp {

using nlohmann::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // HF's own limit
constexpr const char* kMetadataKey = "__metadata__";

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte span within the data section
};

uint64_t read_u64_le(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(std::to_integer<uint8_t>(p[i])) << (8 * i);
  return v;
}

std::map<std::string, std::string> parse_metadata(const json& v, const std::string& file) {
  if (!v.is_object()) fail(file, ": ", kMetadataKey, " must be an object of strings, found ", json_excerpt(v));
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : v.items()) {
    if (!value.is_string())
      fail(file, ": ", kMetadataKey, ".", key, ": expected a string, found ", json_excerpt(value));
    out[key] = value.get<std::string>();
  }
  return out;
}

// One header entry: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}.
Entry parse_entry(const std::string& name, const json& v, uint64_t data_size, const std::string& file) {
  const std::string where = cat(file, ": tensor \"", name, "\"");
  if (!v.is_object()) fail(where, ": expected an object with dtype, shape and data_offsets, found ", json_excerpt(v));
  Entry e;
  e.name = name;

  auto field = [&](const char* key) -> const json& {
    auto it = v.find(key);
    if (it == v.end()) fail(where, ": missing \"", key, "\"");
    return *it;
  };
  auto int_list = [&](const char* key) {
    const json& list = field(key);
    if (!list.is_array()) fail(where, ": \"", key, "\" must be a list of integers, found ", json_excerpt(list));
    std::vector<int64_t> out;
    for (const json& x : list) {
      const auto i = json_int64(x);
      if (!i || *i < 0) fail(where, ": \"", key, "\" must hold non-negative integers, found ", json_excerpt(x));
      out.push_back(*i);
    }
    return out;
  };

  const json& dtype = field("dtype");
  if (!dtype.is_string()) fail(where, ": \"dtype\" must be a string, found ", json_excerpt(dtype));
  const auto parsed = parse_dtype(dtype.get<std::string>());
  if (!parsed)
    fail(where, ": unknown dtype ", json_excerpt(dtype), " (known: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)");
  e.dtype = *parsed;

  e.shape = int_list("shape");
  const auto offsets = int_list("data_offsets");
  if (offsets.size() != 2)
    fail(where, ": \"data_offsets\" must be [begin, end], found ", json_excerpt(field("data_offsets")));
  e.begin = uint64_t(offsets[0]);
  e.end = uint64_t(offsets[1]);
  if (e.begin > e.end) fail(where, ": data_offsets [", e.begin, ", ", e.end, "] end before they begin");
  if (e.end > data_size)
    fail(where, ": data_offsets [", e.begin, ", ", e.end, "] reach past the data section (", data_size, " bytes)");

  const int64_t numel = checked_numel(e.shape, where);
  const uint64_t elem = dtype_size(e.dtype);
  if (uint64_t(numel) > UINT64_MAX / elem) fail(where, ": shape ", shape_str(e.shape), " overflows 64 bits");
  const uint64_t expected = uint64_t(numel) * elem;
  if (expected != e.end - e.begin)
    fail(where, ": shape ", shape_str(e.shape), " of ", dtype_name(e.dtype), " needs ", expected,
         " bytes but data_offsets span ", e.end - e.begin);
  return e;
}

void check_no_overlap(std::vector<const Entry*> entries, const std::string& file) {
  std::sort(entries.begin(), entries.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  const Entry* last = nullptr;  // the non-empty span reaching furthest so far
  for (const Entry* e : entries) {
    if (e->begin == e->end) continue;  // empty tensors occupy nothing
    if (last && e->begin < last->end)
      fail(file, ": tensors \"", last->name, "\" [", last->begin, ", ", last->end, ") and \"", e->name, "\" [",
           e->begin, ", ", e->end, ") overlap");
    if (!last || e->end > last->end) last = e;
  }
}

// A view of the data, or an owned copy when the bytes are not aligned for the element type
// (only a file that packs odd-sized tensors first can cause that).
Tensor make_tensor(const Entry& e, const std::byte* data, const std::shared_ptr<const void>& owner) {
  const std::byte* p = data + e.begin;
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(e.dtype) == 0) return Tensor::view(e.dtype, e.shape, p, owner);
  Tensor t = Tensor::zeros(e.dtype, e.shape);
  if (t.nbytes() > 0) std::memcpy(t.mutable_raw(), p, t.nbytes());
  return t;
}

SafetensorsFile parse(const std::byte* bytes, size_t size, const std::string& file,
                      const std::shared_ptr<const void>& owner) {
  if (size < 8) fail(file, ": ", size, " bytes is too short for a safetensors file (no 8-byte header length)");
  const uint64_t header_len = read_u64_le(bytes);
  if (header_len > kMaxHeaderBytes)
    fail(file, ": header length ", header_len, " exceeds the 100 MB limit (corrupt file or not safetensors)");
  if (header_len > size - 8)
    fail(file, ": header length ", header_len, " reaches past the end of the file (", size, " bytes; truncated?)");

  const std::string_view text(reinterpret_cast<const char*>(bytes + 8), size_t(header_len));
  const json header = parse_json(text, file + " (safetensors header)");
  if (!header.is_object()) fail(file, ": the header must be a JSON object, found ", json_excerpt(header));

  const std::byte* data = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  SafetensorsFile out;
  std::vector<Entry> entries;
  entries.reserve(header.size());
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      out.metadata = parse_metadata(value, file);
    } else {
      entries.push_back(parse_entry(key, value, data_size, file));
    }
  }
  std::vector<const Entry*> ptrs;
  for (const Entry& e : entries) ptrs.push_back(&e);
  check_no_overlap(std::move(ptrs), file);
  for (const Entry& e : entries) out.tensors.emplace(e.name, make_tensor(e, data, owner));
  return out;
}

void check_writable(const std::vector<std::pair<std::string, Tensor>>& tensors, const std::filesystem::path& path) {
  std::map<std::string_view, int> seen;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == kMetadataKey) fail(path.string(), ": invalid tensor name \"", name, "\"");
    if (++seen[name] > 1) fail(path.string(), ": tensor \"", name, "\" given twice");
    if (!t.defined()) fail(path.string(), ": tensor \"", name, "\" has no data");
  }
}

}  // namespace

SafetensorsFile parse_safetensors(const std::byte* bytes, size_t size, const std::string& name) {
  return parse(bytes, size, name, nullptr);
}

SafetensorsFile read_safetensors(const std::filesystem::path& path) {
  auto file = MappedFile::open(path);
  return parse(file->data(), file->size(), path.string(), file);
}

void write_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  check_writable(tensors, path);
  // Widest elements first, then by name (as HF's writer does): offsets stay sequential with no
  // gaps, and every tensor starts aligned to its element size.
  std::vector<const std::pair<std::string, Tensor>*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) {
    const size_t sa = dtype_size(a->second.dtype()), sb = dtype_size(b->second.dtype());
    return sa != sb ? sa > sb : a->first < b->first;
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  uint64_t offset = 0;
  for (const auto* t : order) {
    const uint64_t n = t->second.nbytes();
    header[t->first] = {
        {"dtype", dtype_name(t->second.dtype())}, {"shape", t->second.shape()}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception&) {
    fail(path.string(), ": tensor names and metadata must be valid UTF-8");
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // HF pads so the data starts 8-byte aligned

  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));
  AtomicFile out(path);
  out.write(len, 8);
  out.write(text);
  for (const auto* t : order)
    if (t->second.nbytes() > 0) out.write(t->second.raw(), t->second.nbytes());
  out.commit();
}

}  // namespace mambacpp
