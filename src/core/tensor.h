// A Tensor is a dtype, a shape and a pointer to contiguous row-major data that it keeps alive:
// either memory it owns (64-byte aligned, zeroed) or a view into something else (a mapped
// file) held by a shared owner. Copying a Tensor shares the data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace mambacpp {

enum class DType : uint8_t { F32, F16, BF16, F64, I64, I32, I16, I8, U8, Bool };

using Shape = std::vector<int64_t>;

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);  // safetensors spelling: "F32", "BF16", ...
std::optional<DType> parse_dtype(std::string_view name);
bool is_float(DType t);  // F32, F16, BF16, F64

std::string shape_str(const Shape& s);  // "[2, 37, 512]"
// Product of the dims; throws BadInput naming `what` on a negative dim or int64 overflow.
int64_t checked_numel(const Shape& s, std::string_view what);

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }
template <> constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::U8; }

class Tensor {
 public:
  Tensor() = default;
  // Owned, zero-filled, 64-byte aligned storage.
  static Tensor zeros(DType dtype, Shape shape);
  // A view of `data` (not copied); `owner` keeps it alive (may be null for static data).
  static Tensor view(DType dtype, Shape shape, const void* data, std::shared_ptr<const void> owner);

  bool defined() const { return data_ != nullptr || numel() == 0; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return int(shape_.size()); }
  int64_t dim(int i) const { return shape_.at(i < 0 ? i + ndim() : i); }
  int64_t numel() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }

  const void* raw() const { return data_; }
  // Writable access; views of read-only mappings must not be written (owned tensors may).
  void* mutable_raw() { return const_cast<void*>(data_); }

  template <class T> const T* data() const { check_dtype(dtype_of<T>()); return static_cast<const T*>(data_); }
  template <class T> T* mutable_data() { check_dtype(dtype_of<T>()); return static_cast<T*>(mutable_raw()); }

  // A new owned tensor converted to `to` (float dtypes among themselves, ints among themselves).
  Tensor to(DType to) const;
  // Same data, new shape of equal numel.
  Tensor reshaped(Shape shape) const;

 private:
  void check_dtype(DType want) const;

  DType dtype_ = DType::F32;
  Shape shape_;
  const void* data_ = nullptr;
  std::shared_ptr<const void> owner_;
};

}  // namespace mambacpp
