// PyTorch's zip archive around the pickle: finds <top>/data.pkl, checks the byte order, reads
// each storage <top>/data/<key> once and hands out tensors viewing it.
#include <zip.h>

#include <cstdlib>
#include <cstring>

#include "io/torch_pickle.h"

namespace mambacpp {

namespace {

// A libzip archive opened read-only; entries are read whole, sizes checked first.
class ZipReader {
 public:
  ZipReader(const std::filesystem::path& path, uint64_t file_size) : path_(path.string()), file_size_(file_size) {
    int code = 0;
    zip_ = zip_open(path_.c_str(), ZIP_RDONLY, &code);
    if (!zip_) {
      zip_error_t err;
      zip_error_init_with_code(&err, code);
      const std::string why = zip_error_strerror(&err);
      zip_error_fini(&err);
      fail(path_, ": not a readable zip archive (", why,
           "); PyTorch's legacy pre-1.6 .bin format is not supported: re-save it with a recent torch.save");
    }
  }
  ~ZipReader() { zip_discard(zip_); }
  ZipReader(const ZipReader&) = delete;
  ZipReader& operator=(const ZipReader&) = delete;

  const std::string& path() const { return path_; }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    const zip_int64_t n = zip_get_num_entries(zip_, 0);
    for (zip_int64_t i = 0; i < n; ++i)
      if (const char* name = zip_get_name(zip_, zip_uint64_t(i), 0)) out.emplace_back(name);
    return out;
  }

  bool contains(const std::string& name) const { return zip_name_locate(zip_, name.c_str(), 0) >= 0; }

  // The uncompressed size of an entry; fails naming `what` if it is absent, and if the size is
  // more than its compressed bytes can hold (a stored entry: the file size; deflate expands at
  // most 1032:1), so that no forged size makes us allocate more than the file can fill.
  uint64_t size_of(const std::string& name, const std::string& what) const {
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat(zip_, name.c_str(), 0, &st) != 0)
      fail(path_, ": ", what, ": entry ", name, " is missing from the archive");
    const zip_uint64_t needed = ZIP_STAT_SIZE | ZIP_STAT_COMP_SIZE | ZIP_STAT_COMP_METHOD;
    if ((st.valid & needed) != needed) fail(path_, ": entry ", name, " has no recorded size");
    const uint64_t limit = st.comp_method == ZIP_CM_STORE ? st.comp_size : st.comp_size * 1032 + 1024;
    if (st.size > limit || st.comp_size > file_size_)
      fail(path_, ": entry ", name, " claims ", st.size, " bytes, more than its ", st.comp_size,
           " stored bytes can hold");
    return st.size;
  }

  // Reads exactly `size` bytes of entry `name` into `out`.
  void read(const std::string& name, void* out, uint64_t size) const {
    zip_file_t* f = zip_fopen(zip_, name.c_str(), 0);
    if (!f) fail(path_, ": cannot open entry ", name, ": ", zip_strerror(zip_));
    uint64_t done = 0;
    while (done < size) {
      const zip_int64_t n = zip_fread(f, static_cast<char*>(out) + done, size - done);
      if (n <= 0) {
        const std::string why = n < 0 ? zip_file_strerror(f) : "unexpected end of data";
        zip_fclose(f);
        fail(path_, ": cannot read entry ", name, ": ", why);
      }
      done += uint64_t(n);
    }
    zip_fclose(f);
  }

 private:
  std::string path_;
  uint64_t file_size_;
  zip_t* zip_ = nullptr;
};

// The archive's single top folder: the one holding data.pkl.
std::string top_folder(const ZipReader& zip) {
  std::string top;
  for (const std::string& name : zip.names()) {
    const size_t slash = name.find('/');
    if (slash == std::string::npos || name.compare(slash, std::string::npos, "/data.pkl") != 0) continue;
    if (!top.empty())
      fail(zip.path(), ": more than one data.pkl in the archive (", top, "/ and ", name.substr(0, slash), "/)");
    top = name.substr(0, slash);
  }
  if (top.empty()) fail(zip.path(), ": not a PyTorch checkpoint: no <folder>/data.pkl in the archive");
  return top;
}

void check_byte_order(const ZipReader& zip, const std::string& top) {
  const std::string name = top + "/byteorder";
  if (!zip.contains(name)) return;  // written only since PyTorch 2.0; older files are little-endian
  const uint64_t size = zip.size_of(name, "byte order");
  if (size > 16) fail(zip.path(), ": ", name, " is not \"little\" or \"big\"");
  std::string order(size, '\0');
  zip.read(name, order.data(), size);
  if (order != "little") fail(zip.path(), ": storages are \"", order, "\"-endian; only little-endian files are read");
}

using Buffer = std::shared_ptr<const std::byte>;

Buffer read_storage(const ZipReader& zip, const std::string& top, const PickledTensor& t) {
  const std::string name = top + "/data/" + t.storage_key;
  uint64_t want = 0;
  if (__builtin_mul_overflow(uint64_t(t.storage_numel), dtype_size(t.dtype), &want))
    fail(zip.path(), ": storage ", t.storage_key, " claims ", t.storage_numel, " elements");
  const uint64_t have = zip.size_of(name, cat("storage ", t.storage_key));
  if (have != want)
    fail(zip.path(), ": storage ", name, " holds ", have, " bytes; the pickle says ", t.storage_numel, " x ",
         dtype_name(t.dtype), " = ", want);
  void* p = std::aligned_alloc(64, (want + 63) / 64 * 64 + 64);
  if (!p) throw std::bad_alloc();
  Buffer buffer(static_cast<const std::byte*>(p), [](const std::byte* q) { std::free(const_cast<std::byte*>(q)); });
  zip.read(name, p, want);
  return buffer;
}

bool is_contiguous(const PickledTensor& t) {
  int64_t expected = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    if (t.shape[i] != 1 && t.strides[i] != expected) return false;
    expected *= t.shape[i];
  }
  return true;
}

// A contiguous copy of a strided tensor (the pickle checked that every element lies in storage).
Tensor gather(const PickledTensor& t, const std::byte* storage) {
  Tensor out = Tensor::zeros(t.dtype, t.shape);
  const size_t elem = dtype_size(t.dtype);
  auto* dst = static_cast<std::byte*>(out.mutable_raw());
  std::vector<int64_t> index(t.shape.size(), 0);
  for (int64_t n = 0; n < out.numel(); ++n) {
    int64_t src = t.storage_offset;
    for (size_t d = 0; d < index.size(); ++d) src += index[d] * t.strides[d];
    std::memcpy(dst + size_t(n) * elem, storage + size_t(src) * elem, elem);
    for (size_t d = index.size(); d-- > 0;) {  // next index, last dimension fastest
      if (++index[d] < t.shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

}  // namespace

TensorMap read_torch_zip(const std::filesystem::path& path) {
  std::error_code ec;
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  if (ec) fail(path.string(), ": cannot read: ", ec.message());
  const ZipReader zip(path, file_size);
  const std::string top = top_folder(zip);
  check_byte_order(zip, top);

  const std::string pkl_name = top + "/data.pkl";
  const uint64_t pkl_size = zip.size_of(pkl_name, "pickle");
  std::vector<std::byte> pkl(pkl_size);
  zip.read(pkl_name, pkl.data(), pkl_size);
  const auto records = parse_state_dict_pickle(pkl.data(), pkl.size(), path.string() + ":" + pkl_name);

  std::map<std::string, Buffer> storages;  // each read once, shared by the tensors viewing it
  TensorMap out;
  for (const auto& [name, t] : records) {
    Buffer& storage = storages[t.storage_key];
    if (!storage) storage = read_storage(zip, top, t);
    const std::byte* base = storage.get();
    out[name] = is_contiguous(t)
                    ? Tensor::view(t.dtype, t.shape, base + size_t(t.storage_offset) * dtype_size(t.dtype), storage)
                    : gather(t, base);
  }
  return out;
}

}  // namespace mambacpp
