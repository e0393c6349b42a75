#include "core/tensor.h"

#include <array>
#include <cstdlib>
#include <cstring>

#include "core/half.h"

namespace mambacpp {

namespace {
struct DTypeInfo {
  DType type;
  std::string_view name;
  size_t size;
};
constexpr std::array<DTypeInfo, 10> kDTypes{{
    {DType::F32, "F32", 4}, {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2}, {DType::F64, "F64", 8},
    {DType::I64, "I64", 8}, {DType::I32, "I32", 4}, {DType::I16, "I16", 2}, {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},   {DType::Bool, "BOOL", 1},
}};
const DTypeInfo& info(DType t) { return kDTypes.at(size_t(t)); }

double load_as_double(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::F64: return static_cast<const double*>(p)[i];
    default: break;
  }
  MAMBACPP_CHECK(false);
}
int64_t load_as_int(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::I64: return static_cast<const int64_t*>(p)[i];
    case DType::I32: return static_cast<const int32_t*>(p)[i];
    case DType::I16: return static_cast<const int16_t*>(p)[i];
    case DType::I8: return static_cast<const int8_t*>(p)[i];
    case DType::U8: return static_cast<const uint8_t*>(p)[i];
    case DType::Bool: return static_cast<const uint8_t*>(p)[i] != 0;
    default: break;
  }
  MAMBACPP_CHECK(false);
}
void store_double(DType t, void* p, int64_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = float(v); return;
    case DType::F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(float(v)); return;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(float(v)); return;
    case DType::F64: static_cast<double*>(p)[i] = v; return;
    default: break;
  }
  MAMBACPP_CHECK(false);
}
void store_int(DType t, void* p, int64_t i, int64_t v) {
  switch (t) {
    case DType::I64: static_cast<int64_t*>(p)[i] = v; return;
    case DType::I32: static_cast<int32_t*>(p)[i] = int32_t(v); return;
    case DType::I16: static_cast<int16_t*>(p)[i] = int16_t(v); return;
    case DType::I8: static_cast<int8_t*>(p)[i] = int8_t(v); return;
    case DType::U8: static_cast<uint8_t*>(p)[i] = uint8_t(v); return;
    case DType::Bool: static_cast<uint8_t*>(p)[i] = v != 0; return;
    default: break;
  }
  MAMBACPP_CHECK(false);
}
}  // namespace

size_t dtype_size(DType t) { return info(t).size; }
std::string_view dtype_name(DType t) { return info(t).name; }
std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& d : kDTypes)
    if (d.name == name) return d.type;
  return std::nullopt;
}
bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64; }

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t checked_numel(const Shape& s, std::string_view what) {
  int64_t n = 1;
  for (int64_t d : s) {
    if (d < 0) fail(what, ": negative dimension in shape ", shape_str(s));
    if (d != 0 && n > INT64_MAX / d) fail(what, ": shape ", shape_str(s), " overflows 64 bits");
    n *= d;
  }
  return n;
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

Tensor Tensor::zeros(DType dtype, Shape shape) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  const size_t bytes = size_t(checked_numel(t.shape_, "tensor")) * dtype_size(dtype);
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded ? rounded : 64);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, rounded ? rounded : 64);
  t.owner_ = std::shared_ptr<const void>(p, [](const void* q) { std::free(const_cast<void*>(q)); });
  t.data_ = p;
  return t;
}

Tensor Tensor::view(DType dtype, Shape shape, const void* data, std::shared_ptr<const void> owner) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.data_ = data;
  t.owner_ = std::move(owner);
  return t;
}

Tensor Tensor::to(DType to) const {
  Tensor out = zeros(to, shape_);
  const int64_t n = numel();
  if (to == dtype_) {
    std::memcpy(out.mutable_raw(), data_, nbytes());
  } else if (is_float(dtype_) && is_float(to)) {
    for (int64_t i = 0; i < n; ++i) store_double(to, out.mutable_raw(), i, load_as_double(dtype_, data_, i));
  } else if (!is_float(dtype_) && !is_float(to)) {
    for (int64_t i = 0; i < n; ++i) store_int(to, out.mutable_raw(), i, load_as_int(dtype_, data_, i));
  } else {
    fail("cannot convert a ", dtype_name(dtype_), " tensor to ", dtype_name(to));
  }
  return out;
}

Tensor Tensor::reshaped(Shape shape) const {
  MAMBACPP_CHECK(checked_numel(shape, "reshape") == numel());
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

void Tensor::check_dtype(DType want) const {
  if (want != dtype_) internal_error(__FILE__, __LINE__, "tensor accessed with the wrong element type");
}

}  // namespace mambacpp
