// safetensors: the fixture reads with the values Python's struct module gives; every dtype
// round-trips through the writer; every malformed file (made here from the good fixture) gives a
// BadInput naming the file and the tensor; a failed write leaves nothing behind.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "test_support.h"

namespace mambacpp {
namespace {

using nlohmann::json;
using namespace mambacpp::testing;

const std::filesystem::path kFixture = test_data("hf-tiny-mamba/model.safetensors");

uint64_t header_length(const std::vector<std::byte>& file) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(std::to_integer<uint8_t>(file[i])) << (8 * i);
  return n;
}

void set_header_length(std::vector<std::byte>& file, uint64_t n) {
  for (int i = 0; i < 8; ++i) file[i] = std::byte(uint8_t(n >> (8 * i)));
}

// A file with `header` (raw text) followed by `data`.
std::vector<std::byte> assemble(const std::string& header, const std::vector<std::byte>& data) {
  std::vector<std::byte> out(8);
  set_header_length(out, header.size());
  for (char c : header) out.push_back(std::byte(c));
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// The fixture with its header rewritten by `edit` and the same data section.
std::vector<std::byte> edited_fixture(const std::function<void(json&)>& edit) {
  const auto file = read_bytes(kFixture);
  const uint64_t n = header_length(file);
  json header = json::parse(std::string(reinterpret_cast<const char*>(file.data()) + 8, n));
  edit(header);
  return assemble(header.dump(), std::vector<std::byte>(file.begin() + 8 + long(n), file.end()));
}

void expect_parse_error(const std::vector<std::byte>& bytes, std::initializer_list<std::string> parts) {
  expect_bad_input([&] { parse_safetensors(bytes.data(), bytes.size(), "bad.safetensors"); }, parts);
}

TEST(Safetensors, FixtureReadsWithKnownValues) {
  const auto f = read_safetensors(kFixture);
  EXPECT_EQ(f.tensors.size(), 22u);
  EXPECT_EQ(f.metadata.at("format"), "pt");
  const Tensor& emb = f.tensors.at("backbone.embeddings.weight");
  EXPECT_EQ(emb.dtype(), DType::F32);
  EXPECT_EQ(emb.shape(), (Shape{512, 64}));
  // Expected values read with Python's struct module from the same file.
  EXPECT_EQ(emb.data<float>()[0], 0.08641547709703445f);
  EXPECT_EQ(emb.data<float>()[512 * 64 - 1], 0.005659951828420162f);
  EXPECT_EQ(f.tensors.at("backbone.norm_f.weight").data<float>()[0], 1.018402338027954f);
  EXPECT_EQ(f.tensors.at("backbone.layers.1.mixer.A_log").shape(), (Shape{128, 16}));
  EXPECT_EQ(f.tensors.at("backbone.layers.1.mixer.A_log").data<float>()[5], 1.7653995752334595f);
}

TEST(Safetensors, TensorsOutliveTheReader) {
  Tensor norm;
  {
    auto f = read_safetensors(kFixture);
    norm = f.tensors.at("backbone.norm_f.weight");
  }
  EXPECT_EQ(norm.data<float>()[0], 1.018402338027954f);  // the mapping is kept alive by the view
}

// Tensors of every dtype with distinct byte patterns, odd sizes included.
std::vector<std::pair<std::string, Tensor>> every_dtype() {
  std::vector<std::pair<std::string, Tensor>> out;
  const DType all[] = {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I64,
                       DType::I32, DType::I16, DType::I8,   DType::U8,  DType::Bool};
  int k = 0;
  for (DType d : all) {
    Tensor t = Tensor::zeros(d, Shape{3, k % 3 + 1});
    auto* p = static_cast<uint8_t*>(t.mutable_raw());
    for (size_t i = 0; i < t.nbytes(); ++i) p[i] = uint8_t(d == DType::Bool ? i % 2 : 17 * i + 31 * k + 1);
    out.emplace_back(cat("t", dtype_name(d)), t);
    ++k;
  }
  out.emplace_back("empty", Tensor::zeros(DType::F32, Shape{0, 5}));
  out.emplace_back("scalar", Tensor::zeros(DType::I64, Shape{}));
  return out;
}

TEST(Safetensors, EveryDtypeRoundTrips) {
  TempDir dir;
  const auto tensors = every_dtype();
  const std::map<std::string, std::string> meta{{"format", "pt"}, {"note", "round trip"}};
  write_safetensors(dir / "all.safetensors", tensors, meta);
  const auto back = read_safetensors(dir / "all.safetensors");
  EXPECT_EQ(back.metadata, meta);
  ASSERT_EQ(back.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    const Tensor& r = back.tensors.at(name);
    EXPECT_EQ(r.dtype(), t.dtype());
    EXPECT_EQ(r.shape(), t.shape());
    ASSERT_EQ(r.nbytes(), t.nbytes());
    if (t.nbytes() > 0) {
      EXPECT_EQ(std::memcmp(r.raw(), t.raw(), t.nbytes()), 0);
    }
    EXPECT_EQ(reinterpret_cast<uintptr_t>(r.raw()) % dtype_size(r.dtype()), 0u) << "misaligned";
  }
}

TEST(Safetensors, WrittenLayoutIsWhatHuggingFaceExpects) {
  TempDir dir;
  write_safetensors(dir / "all.safetensors", every_dtype());
  const auto file = read_bytes(dir / "all.safetensors");
  const uint64_t n = header_length(file);
  EXPECT_EQ(n % 8, 0u) << "header must be padded to 8 bytes";
  const json header = json::parse(std::string(reinterpret_cast<const char*>(file.data()) + 8, n));
  // Offsets sequential without gaps, ending exactly at the end of the file; each start aligned.
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& [name, e] : header.items()) {
    const uint64_t begin = e["data_offsets"][0], end = e["data_offsets"][1];
    spans.emplace_back(begin, end);
    EXPECT_EQ(begin % dtype_size(*parse_dtype(e["dtype"].get<std::string>())), 0u) << name;
  }
  std::sort(spans.begin(), spans.end());
  uint64_t pos = 0;
  for (const auto& [b, e] : spans) {
    EXPECT_EQ(b, pos);
    pos = e;
  }
  EXPECT_EQ(8 + n + pos, file.size());
}

TEST(Safetensors, RewriteOfFixtureIsIdenticalInContent) {
  TempDir dir;
  const auto f = read_safetensors(kFixture);
  std::vector<std::pair<std::string, Tensor>> list(f.tensors.begin(), f.tensors.end());
  write_safetensors(dir / "copy.safetensors", list, f.metadata);
  // Same tensors, sorted by name, all F32: HF's writer gives the very same bytes.
  EXPECT_EQ(read_bytes(dir / "copy.safetensors"), read_bytes(kFixture));
}

TEST(Safetensors, MisalignedTensorIsCopied) {
  // Another writer may pack a 3-byte tensor first: the F32 after it starts at an odd offset.
  const std::string header = R"({"u":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
                             R"("f":{"dtype":"F32","shape":[1],"data_offsets":[3,7]}})";
  std::vector<std::byte> data{std::byte(1), std::byte(2), std::byte(3)};
  const float value = -1.25f;
  for (int i = 0; i < 4; ++i) data.push_back(reinterpret_cast<const std::byte*>(&value)[i]);
  const auto file = assemble(header, data);
  const auto f = parse_safetensors(file.data(), file.size(), "odd.safetensors");
  const Tensor& t = f.tensors.at("f");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 4, 0u);
  EXPECT_EQ(t.data<float>()[0], value);
  EXPECT_EQ(f.tensors.at("u").data<uint8_t>()[2], 3);
}

TEST(Safetensors, TruncatedFile) {
  auto file = read_bytes(kFixture);
  file.resize(file.size() / 2);
  expect_parse_error(file, {"bad.safetensors", "reach past the data section", "tensor \""});
  file.resize(5);
  expect_parse_error(file, {"bad.safetensors", "too short"});
  file.resize(8 + 100);  // header cut
  expect_parse_error(file, {"bad.safetensors", "reaches past the end of the file"});
}

TEST(Safetensors, OversizedHeaderLength) {
  auto file = read_bytes(kFixture);
  set_header_length(file, 200'000'000);
  expect_parse_error(file, {"bad.safetensors", "100 MB"});
  set_header_length(file, UINT64_MAX);
  expect_parse_error(file, {"bad.safetensors", "100 MB"});
}

TEST(Safetensors, HeaderLengthBeyondFile) {
  auto file = read_bytes(kFixture);
  set_header_length(file, file.size() - 7);
  expect_parse_error(file, {"bad.safetensors", "reaches past the end of the file"});
}

TEST(Safetensors, BrokenJson) {
  auto file = read_bytes(kFixture);
  file[8] = std::byte('#');  // the opening brace
  expect_parse_error(file, {"bad.safetensors", "invalid JSON"});
  expect_parse_error(assemble("", {}), {"bad.safetensors", "invalid JSON"});
}

TEST(Safetensors, HeaderNotAnObject) {
  expect_parse_error(assemble("[1, 2, 3]", {}), {"bad.safetensors", "must be a JSON object"});
  expect_parse_error(assemble("\"x\"", {}), {"bad.safetensors", "must be a JSON object"});
}

TEST(Safetensors, OverlappingSpans) {
  const auto file = edited_fixture([](json& h) { h["backbone.norm_f.weight"]["data_offsets"] = {0, 256}; });
  expect_parse_error(file, {"bad.safetensors", "overlap", "backbone.norm_f.weight", "backbone.embeddings.weight"});
}

TEST(Safetensors, OutOfRangeSpan) {
  const auto file = edited_fixture([](json& h) {
    const uint64_t end = h["backbone.norm_f.weight"]["data_offsets"][1];
    h["backbone.norm_f.weight"]["data_offsets"] = {end + 1000, end + 1256};
  });
  expect_parse_error(file, {"bad.safetensors", "backbone.norm_f.weight", "past the data section"});
  const auto reversed = edited_fixture([](json& h) { h["backbone.norm_f.weight"]["data_offsets"] = {256, 0}; });
  expect_parse_error(reversed, {"backbone.norm_f.weight", "end before they begin"});
}

TEST(Safetensors, SpanShapeMismatch) {
  const auto file = edited_fixture([](json& h) { h["backbone.embeddings.weight"]["shape"] = {512, 63}; });
  expect_parse_error(file, {"bad.safetensors", "backbone.embeddings.weight", "[512, 63]", "needs 129024 bytes"});
  const auto wrong_dtype = edited_fixture([](json& h) { h["backbone.norm_f.weight"]["dtype"] = "F16"; });
  expect_parse_error(wrong_dtype, {"backbone.norm_f.weight", "F16"});
}

TEST(Safetensors, ShapeOverflow) {
  const auto file = edited_fixture([](json& h) { h["backbone.norm_f.weight"]["shape"] = {uint64_t(1) << 62, 8}; });
  expect_parse_error(file, {"backbone.norm_f.weight", "overflows"});
  const auto file2 = edited_fixture([](json& h) { h["backbone.norm_f.weight"]["shape"] = {uint64_t(1) << 62}; });
  expect_parse_error(file2, {"backbone.norm_f.weight", "overflows"});
}

TEST(Safetensors, UnknownDtype) {
  const auto file = edited_fixture([](json& h) { h["backbone.norm_f.weight"]["dtype"] = "F8_E4M3"; });
  expect_parse_error(file, {"bad.safetensors", "backbone.norm_f.weight", "unknown dtype", "F8_E4M3"});
}

TEST(Safetensors, DuplicateNames) {
  const std::string entry = R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  const std::string entry2 = R"({"dtype":"F32","shape":[1],"data_offsets":[4,8]})";
  expect_parse_error(assemble(R"({"w":)" + entry + R"(,"w":)" + entry2 + "}", std::vector<std::byte>(8)),
                     {"bad.safetensors", "duplicate", "\"w\""});
}

TEST(Safetensors, MalformedEntries) {
  const auto edit = [](const std::function<void(json&)>& f) {
    return edited_fixture([&](json& h) { f(h["backbone.norm_f.weight"]); });
  };
  const std::string t = "backbone.norm_f.weight";
  expect_parse_error(edit([](json& e) { e.erase("dtype"); }), {t, "missing \"dtype\""});
  expect_parse_error(edit([](json& e) { e.erase("shape"); }), {t, "missing \"shape\""});
  expect_parse_error(edit([](json& e) { e["dtype"] = 3; }), {t, "\"dtype\" must be a string"});
  expect_parse_error(edit([](json& e) { e["shape"] = "64"; }), {t, "\"shape\" must be a list"});
  expect_parse_error(edit([](json& e) { e["shape"] = {-64}; }), {t, "non-negative integers"});
  expect_parse_error(edit([](json& e) { e["shape"] = {64.5}; }), {t, "non-negative integers"});
  expect_parse_error(edit([](json& e) { e["data_offsets"] = {0, 1, 2}; }), {t, "[begin, end]"});
  expect_parse_error(edit([](json& e) { e = 7; }), {t, "expected an object"});
  expect_parse_error(edited_fixture([](json& h) {
                       h["__metadata__"] = {{"format", 1}};
                     }),
                     {"bad.safetensors", "__metadata__.format", "expected a string"});
  expect_parse_error(edited_fixture([](json& h) { h["__metadata__"] = "pt"; }), {"__metadata__", "object"});
}

TEST(Safetensors, ReadErrorsNameThePath) {
  TempDir dir;
  auto file = read_bytes(kFixture);
  file.resize(1000);
  write_bytes(dir / "cut.safetensors", file);
  expect_bad_input([&] { read_safetensors(dir / "cut.safetensors"); }, {(dir / "cut.safetensors").string()});
  expect_bad_input([&] { read_safetensors(dir / "absent.safetensors"); }, {"absent.safetensors", "cannot open"});
}

TEST(Safetensors, FailedWriteLeavesNoFile) {
  TempDir dir;
  const auto tensors = every_dtype();
  expect_bad_input([&] { write_safetensors(dir / "no-such-dir" / "x.safetensors", tensors); }, {"no-such-dir"});
  EXPECT_FALSE(std::filesystem::exists(dir / "no-such-dir"));
  // The rename onto an existing folder fails after the data was written: the temporary must go.
  std::filesystem::create_directory(dir / "taken");
  expect_bad_input([&] { write_safetensors(dir / "taken", tensors); }, {"taken"});
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"taken"});
  // Invalid input is refused before anything is created.
  auto twice = tensors;
  twice.push_back(tensors.front());
  expect_bad_input([&] { write_safetensors(dir / "dup.safetensors", twice); }, {"given twice"});
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"taken"});
}

TEST(Safetensors, OverwriteReplacesWholeFile) {
  TempDir dir;
  write_safetensors(dir / "w.safetensors", every_dtype());
  Tensor one = Tensor::zeros(DType::F32, {2});
  one.mutable_data<float>()[1] = 2.5f;
  write_safetensors(dir / "w.safetensors", {{"only", one}});
  const auto back = read_safetensors(dir / "w.safetensors");
  ASSERT_EQ(back.tensors.size(), 1u);
  EXPECT_EQ(back.tensors.at("only").data<float>()[1], 2.5f);
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"w.safetensors"});
}

}  // namespace
}  // namespace mambacpp
