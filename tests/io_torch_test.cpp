// PyTorch zip checkpoints: mamba-ssm-tiny's pytorch_model.bin (torch.save, PyTorch 1.13) holds
// exactly the tensors of hf-tiny-mamba's model.safetensors; hand-made pickles and archives
// cover what a state dict may contain (strided and shared storages, protocol 4, other dtypes)
// and every malformed or hostile input, each refused with a BadInput.
#include <gtest/gtest.h>
#include <zip.h>

#include <cstring>

#include "io/safetensors.h"
#include "io/torch_pickle.h"
#include "test_support.h"

namespace mambacpp {
namespace {

using namespace mambacpp::testing;
using namespace std::literals;
using Entries = std::map<std::string, std::string>;  // zip entry name -> bytes

const std::filesystem::path kBin = test_data("mamba-ssm-tiny/pytorch_model.bin");

Entries read_zip(const std::filesystem::path& path) {
  int err = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_RDONLY, &err);
  if (!z) throw std::runtime_error("cannot open test zip");
  Entries out;
  for (zip_int64_t i = 0; i < zip_get_num_entries(z, 0); ++i) {
    zip_stat_t st;
    zip_stat_index(z, zip_uint64_t(i), 0, &st);
    std::string data(st.size, '\0');
    zip_file_t* f = zip_fopen_index(z, zip_uint64_t(i), 0);
    zip_fread(f, data.data(), st.size);
    zip_fclose(f);
    out[st.name] = data;
  }
  zip_discard(z);
  return out;
}

// Entries are stored uncompressed, as torch.save does, unless `deflate`.
void write_zip(const std::filesystem::path& path, const Entries& entries, bool deflate = false) {
  int err = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  ASSERT_NE(z, nullptr);
  for (const auto& [name, data] : entries) {
    zip_source_t* src = zip_source_buffer(z, data.data(), data.size(), 0);
    const zip_int64_t index = zip_file_add(z, name.c_str(), src, ZIP_FL_OVERWRITE);
    ASSERT_GE(index, 0);
    ASSERT_EQ(zip_set_file_compression(z, zip_uint64_t(index), deflate ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0), 0);
  }
  ASSERT_EQ(zip_close(z), 0);  // copies the buffers, which `entries` keeps alive until here
}

// A pickle written opcode by opcode, the way torch.save (protocol 2) writes a state dict.
class Pickle {
 public:
  Pickle() { b_ = "\x80\x02"; }
  Pickle& raw(std::string_view s) { b_ += s; return *this; }
  Pickle& op(char c) { b_ += c; return *this; }
  Pickle& str(std::string_view s) {
    b_ += 'X';
    u32(uint32_t(s.size()));
    b_ += s;
    return *this;
  }
  Pickle& integer(int32_t v) {
    b_ += 'J';
    u32(uint32_t(v));
    return *this;
  }
  Pickle& global(std::string_view module, std::string_view name) {
    b_ += 'c';
    b_ += module;
    b_ += '\n';
    b_ += name;
    b_ += '\n';
    return *this;
  }
  Pickle& ints(const std::vector<int64_t>& v) {
    op('(');
    for (int64_t x : v) integer(int32_t(x));
    return op('t');
  }
  Pickle& ordered_dict() { return global("collections", "OrderedDict").op(')').op('R'); }
  // name -> _rebuild_tensor_v2(storage(key, numel), offset, sizes, strides, False, OrderedDict())
  Pickle& tensor(std::string_view name, std::string_view storage_type, std::string_view key, int64_t numel,
                 int64_t offset, const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides) {
    str(name).global("torch._utils", "_rebuild_tensor_v2").op('(');
    op('(').str("storage").global("torch", storage_type).str(key).str("cpu").integer(int32_t(numel)).op('t').op('Q');
    integer(int32_t(offset)).ints(sizes).ints(strides).op('\x89').ordered_dict().op('t').op('R');
    return *this;
  }
  const std::string& bytes() const { return b_; }

 private:
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) b_ += char(v >> (8 * i));
  }
  std::string b_;
};

// A whole state dict {name: tensor} pickle around the entries `body` writes.
std::string state_dict(const std::function<void(Pickle&)>& body) {
  Pickle p;
  p.ordered_dict().op('(');
  body(p);
  return p.op('u').op('.').bytes();
}

std::map<std::string, PickledTensor> parse(const std::string& pkl) {
  return parse_state_dict_pickle(reinterpret_cast<const std::byte*>(pkl.data()), pkl.size(), "data.pkl");
}

void expect_pickle_error(const std::string& pkl, std::initializer_list<std::string> parts) {
  expect_bad_input([&] { parse(pkl); }, parts);
}

std::string floats_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

// ---- the fixture ----

TEST(TorchZip, FixtureEqualsTheSafetensorsCheckpoint) {
  const TensorMap bin = read_torch_zip(kBin);
  const auto st = read_safetensors(test_data("hf-tiny-mamba/model.safetensors"));
  EXPECT_EQ(bin.size(), st.tensors.size() + 1);  // + lm_head.weight, tied
  for (const auto& [hf_name, expected] : st.tensors) {
    std::string name = hf_name;
    if (name == "backbone.embeddings.weight") name = "backbone.embedding.weight";  // mamba_ssm's spelling
    SCOPED_TRACE(name);
    ASSERT_TRUE(bin.count(name));
    const Tensor& got = bin.at(name);
    EXPECT_EQ(got.dtype(), expected.dtype());
    ASSERT_EQ(got.shape(), expected.shape());
    EXPECT_EQ(std::memcmp(got.raw(), expected.raw(), got.nbytes()), 0) << "values differ";
  }
  const Tensor& head = bin.at("lm_head.weight");
  const Tensor& emb = bin.at("backbone.embedding.weight");
  ASSERT_EQ(head.shape(), emb.shape());
  EXPECT_EQ(head.raw(), emb.raw()) << "a shared storage is read once and viewed by both";
}

TEST(TorchZip, FixturePickleRecords) {
  const Entries zip = read_zip(kBin);
  const auto records = parse(zip.at("pytorch_model/data.pkl"));
  ASSERT_EQ(records.size(), 23u);
  const PickledTensor& emb = records.at("backbone.embedding.weight");
  EXPECT_EQ(emb.storage_key, "0");
  EXPECT_EQ(emb.dtype, DType::F32);
  EXPECT_EQ(emb.shape, (Shape{512, 64}));
  EXPECT_EQ(emb.strides, (std::vector<int64_t>{64, 1}));
  EXPECT_EQ(emb.storage_numel, 32768);
  EXPECT_EQ(records.at("lm_head.weight").storage_key, "0");
}

TEST(TorchZip, AnyTopFolderAndByteOrderLittle) {
  TempDir dir;
  Entries renamed;
  for (const auto& [name, data] : read_zip(kBin)) renamed["archive" + name.substr(name.find('/'))] = data;
  renamed["archive/byteorder"] = "little";
  write_zip(dir / "a.bin", renamed, /*deflate=*/true);  // compressed entries read as well
  const TensorMap t = read_torch_zip(dir / "a.bin");
  EXPECT_EQ(t.size(), 23u);
  const Tensor original = read_torch_zip(kBin).at("backbone.norm_f.weight");
  EXPECT_EQ(std::memcmp(t.at("backbone.norm_f.weight").raw(), original.raw(), original.nbytes()), 0);
}

// ---- hand-made archives: layouts torch writes that the fixture does not show ----

TEST(TorchZip, StridedOffsetAndSharedStorages) {
  TempDir dir;
  // One storage of 12 floats 0..11 viewed three ways: a 3x4 matrix, its transpose (strides 1, 4),
  // and the last 2x2 block starting at offset 6 with row stride 4.
  std::vector<float> s(12);
  for (int i = 0; i < 12; ++i) s[size_t(i)] = float(i);
  const std::string pkl = state_dict([](Pickle& p) {
    p.tensor("m", "FloatStorage", "0", 12, 0, {3, 4}, {4, 1});
    p.tensor("t", "FloatStorage", "0", 12, 0, {4, 3}, {1, 4});
    p.tensor("b", "FloatStorage", "0", 12, 6, {2, 2}, {4, 1});
    p.tensor("scalar", "FloatStorage", "0", 12, 5, {}, {});
  });
  write_zip(dir / "s.bin", {{"x/data.pkl", pkl}, {"x/data/0", floats_bytes(s)}});
  const TensorMap t = read_torch_zip(dir / "s.bin");
  const float* tr = t.at("t").data<float>();
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 3; ++c) EXPECT_EQ(tr[r * 3 + c], float(c * 4 + r)) << r << "," << c;
  const float* b = t.at("b").data<float>();
  EXPECT_EQ((std::vector<float>(b, b + 4)), (std::vector<float>{6, 7, 10, 11}));
  EXPECT_EQ(t.at("scalar").data<float>()[0], 5.0f);
  EXPECT_EQ(t.at("m").data<float>()[11], 11.0f);
}

TEST(TorchZip, OtherStorageTypes) {
  TempDir dir;
  const std::string pkl = state_dict([](Pickle& p) {
    p.tensor("h", "HalfStorage", "0", 2, 0, {2}, {1});
    p.tensor("bf", "BFloat16Storage", "1", 2, 0, {2}, {1});
    p.tensor("l", "LongStorage", "2", 1, 0, {1}, {1});
  });
  // F16 1.0 = 0x3c00, BF16 -2.0 = 0xc000, int64 -5.
  const std::string half("\x00\x3c\x00\x3c", 4), bf("\x00\xc0\x00\xc0", 4), lng("\xfb\xff\xff\xff\xff\xff\xff\xff", 8);
  write_zip(dir / "d.bin", {{"x/data.pkl", pkl}, {"x/data/0", half}, {"x/data/1", bf}, {"x/data/2", lng}});
  const TensorMap t = read_torch_zip(dir / "d.bin");
  EXPECT_EQ(t.at("h").dtype(), DType::F16);
  EXPECT_EQ(t.at("h").to(DType::F32).data<float>()[1], 1.0f);
  EXPECT_EQ(t.at("bf").to(DType::F32).data<float>()[0], -2.0f);
  EXPECT_EQ(t.at("l").data<int64_t>()[0], -5);
}

TEST(TorchPickle, Protocol4StackGlobalAndMemoize) {
  // {"w": _rebuild_parameter(_rebuild_tensor_v2(...), True, OrderedDict())} in protocol-4 style.
  Pickle p;
  p.raw("\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00"sv);  // PROTO 4, FRAME
  p.raw("\x8c\x0b" "collections\x94\x8c\x0bOrderedDict\x94\x93\x94").op(')').op('R').raw("\x94");
  p.raw("\x8c\x01w").raw("\x8c\x0ctorch._utils\x8c\x12_rebuild_parameter\x93");
  p.op('(').global("torch._utils", "_rebuild_tensor_v2").op('(');
  p.op('(').str("storage").global("torch", "FloatStorage").str("k").str("cuda:0").integer(6).op('t').op('Q');
  p.integer(0).ints({2, 3}).ints({3, 1}).op('\x88').raw("h\x02").op(')').op('R').op('t').op('R');
  p.op('\x88').raw("h\x02").op(')').op('R').op('t').op('R');
  p.op('s').op('.');
  const auto r = parse(p.bytes());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r.at("w").shape, (Shape{2, 3}));
  EXPECT_EQ(r.at("w").storage_key, "k");
}

TEST(TorchPickle, StateDictMetadataIsIgnored) {
  // state_dict() carries _metadata, pickled as BUILD on the OrderedDict.
  const std::string body = state_dict([](Pickle& p) { p.tensor("w", "FloatStorage", "0", 1, 0, {1}, {1}); });
  Pickle meta;
  meta.raw(body.substr(2, body.size() - 3));  // without PROTO and STOP
  // BUILD with {"_metadata": OrderedDict({"": {"version": 1}})}
  meta.op('}').str("_metadata").ordered_dict().str("").op('}').str("version").integer(1);
  meta.op('s').op('s').op('s').op('b').op('.');
  const auto r = parse(meta.bytes());
  EXPECT_EQ(r.size(), 1u);
}

// ---- malformed and hostile pickles ----

TEST(TorchPickle, ForbiddenGlobals) {
  expect_pickle_error(Pickle().global("os", "system").str("echo hi").op('\x85').op('R').op('.').bytes(),
                      {"data.pkl", "forbidden global os.system"});
  expect_pickle_error(Pickle().raw("\x8c\x08" "builtins\x8c\x04" "eval\x93").op('.').bytes(),
                      {"forbidden global builtins.eval"});
  expect_pickle_error(Pickle().global("torch", "load").op('.').bytes(), {"forbidden global torch.load"});
  expect_pickle_error(Pickle().global("torch", "FloatStorage").op(')').op('R').op('.').bytes(), {"cannot be called"});
}

TEST(TorchPickle, BadOpcodes) {
  expect_pickle_error(Pickle().op('\xff').bytes(), {"data.pkl", "0xff", "unsupported opcode"});
  expect_pickle_error(Pickle().raw("I1\n.").bytes(), {"0x49", "unsupported opcode"});  // text INT
  expect_pickle_error(std::string("\x80\x09."), {"protocol 9"});
  expect_pickle_error(Pickle().raw("\x8a\x09" "123456789").op('.').bytes(), {"does not fit 64 bits"});
}

TEST(TorchPickle, StackAndMemoAbuse) {
  expect_pickle_error(Pickle().op('t').op('.').bytes(), {"no MARK"});
  expect_pickle_error(Pickle().op('\x86').op('.').bytes(), {"stack underflow"});
  expect_pickle_error(Pickle().op('N').op('(').op('\x85').op('.').bytes(), {"stack underflow"});  // not past a MARK
  expect_pickle_error(Pickle().raw("h\x05").op('.').bytes(), {"memo key 5 was never stored"});
  expect_pickle_error(Pickle().raw("q\x00"sv).bytes(), {"stack underflow"});
  expect_pickle_error(Pickle().op('N').op('N').op('.').bytes(), {"2 values on the stack"});
  expect_pickle_error(Pickle().op('.').bytes(), {"0 values on the stack"});
  expect_pickle_error(Pickle().op('N').op('N').op('s').op('.').bytes(), {"stack underflow"});
  expect_pickle_error(Pickle().op(']').op('N').op('N').op('s').op('.').bytes(), {"SETITEM target must be a dict"});
}

TEST(TorchPickle, Truncated) {
  const std::string good = read_zip(kBin).at("pytorch_model/data.pkl");
  ASSERT_NO_THROW(parse(good));
  // Every prefix of a real data.pkl is refused cleanly (no crash, no other exception type).
  for (size_t n = 0; n < good.size(); ++n) {
    try {
      parse(good.substr(0, n));
      ADD_FAILURE() << "prefix of " << n << " bytes accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::BadInput);
    }
  }
  expect_pickle_error(Pickle().raw("X\xff\xff\xff\x7f").bytes(), {"runs past the end"});
  expect_pickle_error(Pickle().raw("ctorch\nFloat").bytes(), {"truncated inside a GLOBAL"});
}

TEST(TorchPickle, NotAStateDict) {
  expect_pickle_error(Pickle().integer(1).op('.').bytes(), {"holds a int, not a dict"});
  expect_pickle_error(state_dict([](Pickle& p) { p.str("step").integer(3); }),
                      {"entry \"step\" is a int, not a tensor"});
  expect_pickle_error(state_dict([](Pickle& p) { p.integer(3).integer(3); }), {"key is a int"});
  expect_pickle_error(state_dict([](Pickle& p) {
                        p.tensor("w", "FloatStorage", "0", 4, 0, {4}, {1});
                        p.tensor("w", "FloatStorage", "0", 4, 0, {4}, {1});
                      }),
                      {"entry \"w\" appears twice"});
}

TEST(TorchPickle, TensorsMustLieInTheirStorage) {
  const auto one = [](int64_t numel, int64_t offset, std::vector<int64_t> size, std::vector<int64_t> stride) {
    return state_dict([&](Pickle& p) { p.tensor("w", "FloatStorage", "0", numel, offset, size, stride); });
  };
  EXPECT_NO_THROW(parse(one(12, 0, {3, 4}, {4, 1})));
  EXPECT_NO_THROW(parse(one(12, 12, {0}, {1})));
  expect_pickle_error(one(11, 0, {3, 4}, {4, 1}), {"reaches past storage 0", "11 elements"});
  expect_pickle_error(one(12, 1, {3, 4}, {4, 1}), {"reaches past storage 0"});
  expect_pickle_error(one(12, 0, {4, 3}, {4, 1}), {"reaches past storage 0"});
  expect_pickle_error(one(12, 13, {0}, {1}), {"reaches past storage 0"});
  expect_pickle_error(one(12, -1, {2}, {1}), {"negative storage offset"});
  expect_pickle_error(one(12, 0, {2, -3}, {1, 1}), {"negative value -3"});
  expect_pickle_error(one(12, 0, {2, 3}, {1}), {"size and stride differ"});
  expect_pickle_error(one(12, 0, {0x7fffffff, 0x7fffffff, 0x7fffffff}, {1, 1, 1}), {"overflows 64 bits"});
  expect_pickle_error(state_dict([](Pickle& p) {
                        p.tensor("a", "FloatStorage", "0", 4, 0, {4}, {1});
                        p.tensor("b", "HalfStorage", "0", 4, 0, {4}, {1});
                      }),
                      {"storage 0 is described twice"});
}

// ---- malformed archives, made from the fixture ----

class TorchZipBad : public ::testing::Test {
 protected:
  Entries good_ = read_zip(kBin);
  TempDir dir_;
  void expect_error(const Entries& entries, std::initializer_list<std::string> parts) {
    write_zip(dir_ / "bad.bin", entries);
    expect_bad_input([&] { read_torch_zip(dir_ / "bad.bin"); }, parts);
  }
};

TEST_F(TorchZipBad, MissingStorage) {
  good_.erase("pytorch_model/data/3");
  expect_error(good_, {"bad.bin", "storage 3", "pytorch_model/data/3 is missing"});
}

TEST_F(TorchZipBad, StorageOfWrongSize) {
  good_["pytorch_model/data/0"].resize(1000);
  expect_error(good_, {"bad.bin", "pytorch_model/data/0 holds 1000 bytes", "32768 x F32"});
}

TEST_F(TorchZipBad, StorageLargerThanTheFile) {
  const std::string pkl = state_dict([](Pickle& p) { p.tensor("w", "FloatStorage", "0", 0x7fffffff, 0, {4}, {1}); });
  expect_error({{"x/data.pkl", pkl}, {"x/data/0", std::string(16, '\0')}},
               {"x/data/0 holds 16 bytes", "2147483647 x F32"});
}

TEST_F(TorchZipBad, BigEndian) {
  good_["pytorch_model/byteorder"] = "big";
  expect_error(good_, {"bad.bin", "\"big\"-endian"});
}

TEST_F(TorchZipBad, NoPickle) {
  good_.erase("pytorch_model/data.pkl");
  expect_error(good_, {"bad.bin", "no <folder>/data.pkl"});
}

TEST_F(TorchZipBad, ForbiddenGlobalInArchive) {
  good_["pytorch_model/data.pkl"] = Pickle().global("posix", "system").op('.').bytes();
  expect_error(good_, {"bad.bin", "data.pkl", "forbidden global posix.system"});
}

TEST_F(TorchZipBad, NotAZip) {
  write_text(dir_ / "legacy.bin", "\x80\x02\x8a\x0a" "not a zip at all");
  expect_bad_input([&] { read_torch_zip(dir_ / "legacy.bin"); }, {"legacy.bin", "not a readable zip archive"});
  auto bytes = read_bytes(kBin);
  bytes.resize(bytes.size() / 2);  // the central directory is at the end: gone
  write_bytes(dir_ / "cut.bin", bytes);
  expect_bad_input([&] { read_torch_zip(dir_ / "cut.bin"); }, {"cut.bin"});
  expect_bad_input([&] { read_torch_zip(dir_ / "absent.bin"); }, {"absent.bin"});
}

}  // namespace
}  // namespace mambacpp
