// A pickle VM for the one thing torch.save writes into data.pkl: a dict of tensors. It knows
// the opcodes of protocols 2-5 that such a file uses and a fixed list of globals, each mapped
// to a C++ action; it never imports or calls anything. Values live in one arena and refer to
// each other by index, so even a hostile file cannot build reference cycles or recurse.
#include "io/torch_pickle.h"

#include <cstring>
#include <unordered_map>

namespace mambacpp {

namespace {

constexpr size_t kMaxValues = size_t(1) << 24;  // objects one data.pkl may create
constexpr size_t kMaxDims = 64;

enum class Kind : uint8_t { None, Bool, Int, Float, Str, Tuple, List, Dict, Global, Storage, Tensor };

const char* kind_name(Kind k) {
  constexpr const char* kNames[] = {"None",  "bool", "int",    "float",   "str",   "tuple",
                                    "list",  "dict", "global", "storage", "tensor"};
  return kNames[size_t(k)];
}

// The globals a state dict may name; anything else is refused where it is named.
enum class Global : uint8_t { OrderedDict, RebuildTensorV2, RebuildParameter, StorageType };
struct KnownGlobal {
  std::string_view name;
  Global what;
  DType dtype;  // StorageType only
};
constexpr KnownGlobal kGlobals[] = {
    {"collections.OrderedDict", Global::OrderedDict, DType::U8},
    {"torch._utils._rebuild_tensor_v2", Global::RebuildTensorV2, DType::U8},
    {"torch._utils._rebuild_parameter", Global::RebuildParameter, DType::U8},
    {"torch.FloatStorage", Global::StorageType, DType::F32},
    {"torch.HalfStorage", Global::StorageType, DType::F16},
    {"torch.BFloat16Storage", Global::StorageType, DType::BF16},
    {"torch.DoubleStorage", Global::StorageType, DType::F64},
    {"torch.LongStorage", Global::StorageType, DType::I64},
    {"torch.IntStorage", Global::StorageType, DType::I32},
    {"torch.ShortStorage", Global::StorageType, DType::I16},
    {"torch.CharStorage", Global::StorageType, DType::I8},
    {"torch.ByteStorage", Global::StorageType, DType::U8},
    {"torch.BoolStorage", Global::StorageType, DType::Bool},
};

struct Value {
  Kind kind = Kind::None;
  int64_t i = 0;              // Bool, Int; Global: index in kGlobals; Storage/Tensor: index in their tables
  double f = 0;               // Float
  std::string s;              // Str
  std::vector<size_t> items;  // Tuple, List; Dict: key, value, key, value, ...
};

Value scalar(Kind k, int64_t i = 0) {
  Value v;
  v.kind = k;
  v.i = i;
  return v;
}
Value text(std::string s) {
  Value v;
  v.kind = Kind::Str;
  v.s = std::move(s);
  return v;
}

struct Storage {
  std::string key;
  DType dtype;
  int64_t numel;
};

class Unpickler {
 public:
  Unpickler(const std::byte* bytes, size_t size, const std::string& name) : p_(bytes), size_(size), name_(name) {}

  std::map<std::string, PickledTensor> run() {
    while (!step()) {
    }
    if (stack_.size() != 1 || !marks_.empty())
      fail(name_, ": pickle ends with ", stack_.size(), " values on the stack (expected one: the state dict)");
    return state_dict(stack_[0]);
  }

 private:
  // ---- reading the byte stream, bounds-checked ----
  const std::byte* take(size_t n) {
    if (n > size_ - pos_) fail(name_, ": pickle truncated at byte ", pos_, " (needs ", n, " more bytes)");
    const std::byte* p = p_ + pos_;
    pos_ += n;
    return p;
  }
  uint64_t uint_le(size_t n) {
    const std::byte* p = take(n);
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= uint64_t(std::to_integer<uint8_t>(p[i])) << (8 * i);
    return v;
  }
  std::string bytes_as_string(uint64_t n) {
    if (n > size_ - pos_) fail(name_, ": pickle string of ", n, " bytes runs past the end at byte ", pos_);
    return std::string(reinterpret_cast<const char*>(take(size_t(n))), size_t(n));
  }
  std::string line() {  // GLOBAL's operands: text up to '\n'
    const auto* begin = reinterpret_cast<const char*>(p_ + pos_);
    const void* nl = std::memchr(begin, '\n', size_ - pos_);
    if (!nl) fail(name_, ": pickle truncated inside a GLOBAL name at byte ", pos_);
    const size_t n = size_t(static_cast<const char*>(nl) - begin);
    pos_ += n + 1;
    return std::string(begin, n);
  }

  // ---- values and the stack ----
  [[noreturn]] void bad(const std::string& what) const {
    fail(name_, ": pickle opcode 0x", hex(op_), " at byte ", op_pos_, ": ", what);
  }
  static std::string hex(uint8_t b) {
    constexpr char kHex[] = "0123456789abcdef";
    return {kHex[b >> 4], kHex[b & 15]};
  }
  size_t make(Value v) {
    if (values_.size() >= kMaxValues) bad(cat("more than ", kMaxValues, " objects"));
    values_.push_back(std::move(v));
    return values_.size() - 1;
  }
  void push(size_t v) { stack_.push_back(v); }
  void push_new(Value v) { push(make(std::move(v))); }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  size_t pop() {
    if (stack_.size() <= floor()) bad("stack underflow");
    const size_t v = stack_.back();
    stack_.pop_back();
    return v;
  }
  size_t top() const {
    if (stack_.size() <= floor()) bad("stack underflow");
    return stack_.back();
  }
  std::vector<size_t> pop_to_mark() {
    if (marks_.empty()) bad("no MARK to pop to");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<size_t> items(stack_.begin() + long(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  const Value& expect(size_t v, Kind k, const char* role) const {
    if (values_[v].kind != k) bad(cat(role, " must be a ", kind_name(k), ", found a ", kind_name(values_[v].kind)));
    return values_[v];
  }
  void push_tuple(std::vector<size_t> items) {
    Value v = scalar(Kind::Tuple);
    v.items = std::move(items);
    push_new(std::move(v));
  }
  void push_int(int64_t i) { push_new(scalar(Kind::Int, i)); }
  void memo_put(uint64_t key) {
    if (memo_.size() >= kMaxValues) bad("memo too large");
    memo_[key] = top();
  }
  void memo_get(uint64_t key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) bad(cat("memo key ", key, " was never stored"));
    push(it->second);
  }
  // The Python int stored in `n` bytes, two's complement little-endian (LONG1).
  int64_t long_bytes(size_t n) {
    if (n > 8) bad(cat("integer of ", n, " bytes does not fit 64 bits"));
    if (n == 0) return 0;
    const uint64_t raw = uint_le(n);
    if (n == 8) return int64_t(raw);
    const uint64_t sign = uint64_t(1) << (8 * n - 1);
    return int64_t((raw ^ sign) - sign);
  }

  void global(const std::string& module, const std::string& name) {
    const std::string full = module + "." + name;
    for (size_t i = 0; i < std::size(kGlobals); ++i)
      if (kGlobals[i].name == full) return push_new(scalar(Kind::Global, int64_t(i)));
    bad(cat("forbidden global ", full,
            " (a state dict needs only torch tensors, storages and OrderedDict; nothing else is loaded)"));
  }

  // ---- the actions behind the allowed globals ----
  void persistent_load(size_t pid) {
    const auto& t = expect(pid, Kind::Tuple, "persistent id").items;
    if (t.size() != 5)
      bad(cat("persistent id must be ('storage', type, key, location, numel), found ", t.size(), " items"));
    if (expect(t[0], Kind::Str, "persistent id tag").s != "storage") bad("persistent id tag must be 'storage'");
    const Value& type = expect(t[1], Kind::Global, "storage type");
    if (kGlobals[type.i].what != Global::StorageType) bad(cat(kGlobals[type.i].name, " is not a storage type"));
    const std::string& key = expect(t[2], Kind::Str, "storage key").s;
    expect(t[3], Kind::Str, "storage location");
    const int64_t numel = expect(t[4], Kind::Int, "storage size").i;
    if (numel < 0) bad(cat("storage ", key, " has negative size ", numel));
    const DType dtype = kGlobals[type.i].dtype;
    auto [it, inserted] = storage_by_key_.try_emplace(key, storages_.size());
    if (inserted) {
      storages_.push_back({key, dtype, numel});
    } else if (storages_[it->second].dtype != dtype || storages_[it->second].numel != numel) {
      bad(cat("storage ", key, " is described twice with different types or sizes"));
    }
    push_new(scalar(Kind::Storage, int64_t(it->second)));
  }

  std::vector<int64_t> int_tuple(size_t v, const char* role) {
    const auto& items = expect(v, Kind::Tuple, role).items;
    if (items.size() > kMaxDims) bad(cat(role, " has ", items.size(), " dimensions"));
    std::vector<int64_t> out;
    for (size_t x : items) {
      const int64_t i = expect(x, Kind::Int, role).i;
      if (i < 0) bad(cat(role, " holds the negative value ", i));
      out.push_back(i);
    }
    return out;
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  void rebuild_tensor(const std::vector<size_t>& args) {
    if (args.size() != 6 && args.size() != 7) bad(cat("_rebuild_tensor_v2 takes 6 or 7 arguments, got ", args.size()));
    const Storage& s = storages_[size_t(expect(args[0], Kind::Storage, "tensor storage").i)];
    PickledTensor t;
    t.storage_key = s.key;
    t.dtype = s.dtype;
    t.storage_numel = s.numel;
    t.storage_offset = expect(args[1], Kind::Int, "storage offset").i;
    t.shape = int_tuple(args[2], "tensor size");
    t.strides = int_tuple(args[3], "tensor stride");
    expect(args[4], Kind::Bool, "requires_grad");
    if (t.strides.size() != t.shape.size()) bad("tensor size and stride differ in length");
    if (t.storage_offset < 0) bad(cat("negative storage offset ", t.storage_offset));
    check_within_storage(t);
    tensors_.push_back(std::move(t));
    push_new(scalar(Kind::Tensor, int64_t(tensors_.size() - 1)));
  }

  void check_within_storage(const PickledTensor& t) {
    const int64_t numel = checked_numel(t.shape, cat(name_, ": tensor on storage ", t.storage_key));
    int64_t last = t.storage_offset;  // index of the last element the tensor touches
    for (size_t i = 0; i < t.shape.size() && numel > 0; ++i) {
      int64_t span = 0;
      if (__builtin_mul_overflow(t.shape[i] - 1, t.strides[i], &span) || __builtin_add_overflow(last, span, &last))
        bad(cat("tensor on storage ", t.storage_key, ": extent overflows 64 bits"));
    }
    const bool fits = numel == 0 ? t.storage_offset <= t.storage_numel : last < t.storage_numel;
    if (!fits)
      bad(cat("tensor of size ", shape_str(t.shape), " at offset ", t.storage_offset, " reaches past storage ",
              t.storage_key, " (", t.storage_numel, " elements)"));
  }

  void reduce() {
    const size_t args_v = pop();
    const size_t callable = pop();
    const KnownGlobal& g = kGlobals[expect(callable, Kind::Global, "REDUCE callable").i];
    const auto& items = expect(args_v, Kind::Tuple, "REDUCE arguments").items;
    if (items.size() > 7) bad(cat(g.name, " called with ", items.size(), " arguments"));
    const std::vector<size_t> args = items;  // a copy: new values may move the arena
    switch (g.what) {
      case Global::OrderedDict:
        if (!args.empty()) bad("OrderedDict() with arguments");
        return push_new(scalar(Kind::Dict));
      case Global::RebuildTensorV2: return rebuild_tensor(args);
      case Global::RebuildParameter:  // (data, requires_grad, backward_hooks): the tensor itself
        if (args.size() != 3) bad(cat("_rebuild_parameter takes 3 arguments, got ", args.size()));
        expect(args[0], Kind::Tensor, "parameter data");
        return push(args[0]);
      case Global::StorageType: break;
    }
    bad(cat(g.name, " cannot be called"));
  }

  void set_items(const std::vector<size_t>& kv) {
    if (kv.size() % 2) bad("SETITEMS with an odd number of items");
    const size_t d = top();
    expect(d, Kind::Dict, "SETITEM target");
    values_[d].items.insert(values_[d].items.end(), kv.begin(), kv.end());
  }
  void append_items(const std::vector<size_t>& items) {
    const size_t l = top();
    expect(l, Kind::List, "APPEND target");
    values_[l].items.insert(values_[l].items.end(), items.begin(), items.end());
  }

  // Runs one opcode; true at STOP.
  bool step() {
    op_pos_ = pos_;
    op_ = uint8_t(uint_le(1));
    switch (op_) {
      case 0x80: {  // PROTO
        const auto v = uint_le(1);
        if (v < 2 || v > 5) bad(cat("pickle protocol ", v, " (only 2 to 5 are read)"));
        break;
      }
      case 0x95: uint_le(8); break;  // FRAME: a length hint only
      case '.': return true;          // STOP
      case '(': marks_.push_back(stack_.size()); break;
      case ')': push_tuple({}); break;
      case ']': push_new(scalar(Kind::List)); break;
      case '}': push_new(scalar(Kind::Dict)); break;
      case 'N': push_new(scalar(Kind::None)); break;
      case 0x88: push_new(scalar(Kind::Bool, 1)); break;  // NEWTRUE
      case 0x89: push_new(scalar(Kind::Bool, 0)); break;  // NEWFALSE
      case 'J': push_int(int32_t(uint32_t(uint_le(4)))); break;
      case 'K': push_int(int64_t(uint_le(1))); break;
      case 'M': push_int(int64_t(uint_le(2))); break;
      case 0x8a: push_int(long_bytes(size_t(uint_le(1)))); break;  // LONG1
      case 'G': {  // BINFLOAT, big-endian
        uint64_t bits = 0;
        for (const std::byte* b = take(8), *e = b + 8; b != e; ++b) bits = bits << 8 | std::to_integer<uint8_t>(*b);
        Value v = scalar(Kind::Float);
        std::memcpy(&v.f, &bits, 8);
        push_new(std::move(v));
        break;
      }
      case 0x8c: push_new(text(bytes_as_string(uint_le(1)))); break;  // SHORT_BINUNICODE
      case 'X': push_new(text(bytes_as_string(uint_le(4)))); break;   // BINUNICODE
      case 0x8d: push_new(text(bytes_as_string(uint_le(8)))); break;  // BINUNICODE8
      case 'q': memo_put(uint_le(1)); break;         // BINPUT
      case 'r': memo_put(uint_le(4)); break;         // LONG_BINPUT
      case 0x94: memo_put(memo_.size()); break;      // MEMOIZE
      case 'h': memo_get(uint_le(1)); break;         // BINGET
      case 'j': memo_get(uint_le(4)); break;         // LONG_BINGET
      case 't': push_tuple(pop_to_mark()); break;    // TUPLE
      case 0x85: case 0x86: case 0x87: {             // TUPLE1..3
        std::vector<size_t> items(op_ - 0x84);
        for (auto it = items.rbegin(); it != items.rend(); ++it) *it = pop();
        push_tuple(std::move(items));
        break;
      }
      case 'c': {  // GLOBAL "module\nname\n"
        std::string module = line();
        global(module, line());
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        const std::string name = expect(pop(), Kind::Str, "global name").s;
        global(expect(pop(), Kind::Str, "global module").s, name);
        break;
      }
      case 'Q': persistent_load(pop()); break;  // BINPERSID
      case 'R': reduce(); break;
      case 'b': {  // BUILD: only an OrderedDict's state (its _metadata), which is dropped
        pop();
        expect(top(), Kind::Dict, "BUILD target");
        break;
      }
      case 's': {  // SETITEM
        const size_t value = pop();
        const size_t key = pop();
        set_items({key, value});
        break;
      }
      case 'u': set_items(pop_to_mark()); break;  // SETITEMS
      case 'a': append_items({pop()}); break;     // APPEND
      case 'e': append_items(pop_to_mark()); break;  // APPENDS
      default:
        bad("unsupported opcode (not one torch.save uses for a state dict)");
    }
    return false;
  }

  std::map<std::string, PickledTensor> state_dict(size_t root) const {
    const auto& items = values_[root].items;
    if (values_[root].kind != Kind::Dict)
      fail(name_, ": the pickle holds a ", kind_name(values_[root].kind), ", not a dict of tensors");
    std::map<std::string, PickledTensor> out;
    for (size_t i = 0; i < items.size(); i += 2) {
      const Value& key = values_[items[i]];
      const Value& value = values_[items[i + 1]];
      if (key.kind != Kind::Str) fail(name_, ": state dict key is a ", kind_name(key.kind), ", not a string");
      if (value.kind != Kind::Tensor)
        fail(name_, ": entry \"", key.s, "\" is a ", kind_name(value.kind), ", not a tensor");
      if (!out.emplace(key.s, tensors_[size_t(value.i)]).second) fail(name_, ": entry \"", key.s, "\" appears twice");
    }
    return out;
  }

  const std::byte* p_;
  size_t size_, pos_ = 0, op_pos_ = 0;
  uint8_t op_ = 0;
  const std::string& name_;
  std::vector<Value> values_;
  std::vector<size_t> stack_, marks_;
  std::unordered_map<uint64_t, size_t> memo_;
  std::vector<Storage> storages_;
  std::map<std::string, size_t> storage_by_key_;
  std::vector<PickledTensor> tensors_;
};

}  // namespace

std::map<std::string, PickledTensor> parse_state_dict_pickle(const std::byte* bytes, size_t size,
                                                             const std::string& name) {
  return Unpickler(bytes, size, name).run();
}

}  // namespace mambacpp
