#include "model/parameters.h"

#include <cstring>

#include "core/half.h"

namespace mambacpp {

std::string_view weight_type_name(WeightType t) {
  switch (t) {
    case WeightType::F32: return "f32";
    case WeightType::BF16: return "bf16";
    case WeightType::F16: return "f16";
  }
  MAMBACPP_CHECK(false);
}

DType weight_dtype(WeightType t) {
  switch (t) {
    case WeightType::F32: return DType::F32;
    case WeightType::BF16: return DType::BF16;
    case WeightType::F16: return DType::F16;
  }
  MAMBACPP_CHECK(false);
}

namespace {

// Every tensor starts on a 64-element boundary (256 bytes in fp32), so kernels may use aligned
// vector loads on any row block; the padding stays zero (and its gradients, later, too).
constexpr int64_t kAlignElements = 64;

int64_t aligned(int64_t n) { return (n + kAlignElements - 1) / kAlignElements * kAlignElements; }

}  // namespace

ParameterTable::ParameterTable(const MambaConfig& c) {
  index_.assign(size_t(c.n_layer + 1) * kParamRoleCount, -1);
  const int64_t V = c.vocab_size, D = c.d_model, E = c.d_inner, N = c.d_state, R = c.dt_rank, W = c.d_conv;
  using K = ParamKind;
  using P = ParamRole;
  add(P::Embedding, -1, "backbone.embeddings.weight", {V, D}, K::Matrix, "backbone.embedding.weight");
  for (int i = 0; i < int(c.n_layer); ++i) {
    const std::string layer = cat("backbone.layers.", i, ".");
    const std::string mixer = layer + "mixer.";
    add(P::Norm, i, layer + "norm.weight", {D}, K::Vector);
    add(P::InProjWeight, i, mixer + "in_proj.weight", {2 * E, D}, K::Matrix);
    if (c.use_bias) add(P::InProjBias, i, mixer + "in_proj.bias", {2 * E}, K::Vector);
    add(P::ConvWeight, i, mixer + "conv1d.weight", {E, W}, K::Vector, {}, {E, 1, W});
    if (c.use_conv_bias) add(P::ConvBias, i, mixer + "conv1d.bias", {E}, K::Vector);
    add(P::XProjWeight, i, mixer + "x_proj.weight", {R + 2 * N, E}, K::Matrix);
    add(P::DtProjWeight, i, mixer + "dt_proj.weight", {E, R}, K::Matrix);
    add(P::DtBias, i, mixer + "dt_proj.bias", {E}, K::Vector);
    add(P::ALog, i, mixer + "A_log", {E, N}, K::Vector);
    add(P::D, i, mixer + "D", {E}, K::Vector);
    add(P::OutProjWeight, i, mixer + "out_proj.weight", {D, E}, K::Matrix);
    if (c.use_bias) add(P::OutProjBias, i, mixer + "out_proj.bias", {D}, K::Vector);
  }
  add(P::NormF, -1, "backbone.norm_f.weight", {D}, K::Vector);
  if (!c.tie_embeddings) add(P::LmHead, -1, "lm_head.weight", {V, D}, K::Matrix);
}

void ParameterTable::add(ParamRole role, int layer, std::string name, Shape shape, ParamKind kind,
                         std::string alt_name, Shape file_shape) {
  ParamSpec s;
  s.role = role;
  s.layer = layer;
  s.name = std::move(name);
  s.alt_name = std::move(alt_name);
  s.file_shape = file_shape.empty() ? shape : std::move(file_shape);
  s.shape = std::move(shape);
  s.kind = kind;
  int64_t& end = kind == ParamKind::Matrix ? matrix_elements_ : vector_elements_;
  s.offset = end;
  end += aligned(s.numel());
  index_.at(size_t(layer + 1) * kParamRoleCount + size_t(role)) = int(specs_.size());
  specs_.push_back(std::move(s));
}

const ParamSpec* ParameterTable::find(ParamRole role, int layer) const {
  const size_t slot = size_t(layer + 1) * kParamRoleCount + size_t(role);
  if (slot >= index_.size() || index_[slot] < 0) return nullptr;
  return &specs_[size_t(index_[slot])];
}

const ParamSpec* ParameterTable::find(std::string_view file_name) const {
  for (const ParamSpec& s : specs_)
    if (s.name == file_name || (!s.alt_name.empty() && s.alt_name == file_name)) return &s;
  return nullptr;
}

int64_t ParameterTable::parameter_count() const {
  int64_t n = 0;
  for (const ParamSpec& s : specs_) n += s.numel();
  return n;
}

namespace {

// Element codecs: how one float dtype is read as, and written from, a float.
struct F32Codec {
  using T = float;
  static float load(T v) { return v; }
  static T store(float f) { return f; }
};
struct F64Codec {
  using T = double;
  static float load(T v) { return float(v); }
  static T store(float f) { return f; }
};
struct BF16Codec {
  using T = uint16_t;
  static float load(T v) { return bf16_to_f32(v); }
  static T store(float f) { return f32_to_bf16(f); }
};
struct F16Codec {
  using T = uint16_t;
  static float load(T v) { return f16_to_f32(v); }
  static T store(float f) { return f32_to_f16(f); }
};

template <class Fn>
void with_codec(DType t, Fn&& fn) {
  switch (t) {
    case DType::F32: return fn(F32Codec{});
    case DType::F64: return fn(F64Codec{});
    case DType::BF16: return fn(BF16Codec{});
    case DType::F16: return fn(F16Codec{});
    default: break;
  }
  fail("cannot convert ", dtype_name(t), " values to floats");
}

}  // namespace

void convert_floats(DType from, const void* src, DType to, void* dst, int64_t n) {
  if (from == to) {
    std::memcpy(dst, src, size_t(n) * dtype_size(from));
    return;
  }
  with_codec(from, [&](auto in) {
    with_codec(to, [&](auto out) {
      using In = typename decltype(in)::T;
      using Out = typename decltype(out)::T;
      const auto* s = static_cast<const std::byte*>(src);
      auto* d = static_cast<Out*>(dst);
#pragma omp parallel for schedule(static) if (n > (int64_t(1) << 16))
      for (int64_t i = 0; i < n; ++i) {
        In v;  // memcpy: mapped tensors need not be aligned for their type
        std::memcpy(&v, s + size_t(i) * sizeof(In), sizeof(In));
        d[i] = decltype(out)::store(decltype(in)::load(v));
      }
    });
  });
}

Parameters::Parameters(const MambaConfig& config, WeightType weights)
    : table_(config),
      weight_type_(weights),
      vectors_(Tensor::zeros(DType::F32, {table_.region_elements(ParamKind::Vector)})),
      matrices_(Tensor::zeros(weight_dtype(weights), {table_.region_elements(ParamKind::Matrix)})) {}

DType Parameters::dtype_of(const ParamSpec& s) const {
  return s.kind == ParamKind::Matrix ? weight_dtype(weight_type_) : DType::F32;
}

void* Parameters::place(const ParamSpec& s) {
  Tensor& region = s.kind == ParamKind::Matrix ? matrices_ : vectors_;
  return static_cast<std::byte*>(region.mutable_raw()) + size_t(s.offset) * dtype_size(region.dtype());
}

const void* Parameters::place(const ParamSpec& s) const { return const_cast<Parameters*>(this)->place(s); }

float* Parameters::vector(const ParamSpec& s) {
  MAMBACPP_CHECK(s.kind == ParamKind::Vector);
  return static_cast<float*>(place(s));
}

const float* Parameters::vector(const ParamSpec& s) const { return const_cast<Parameters*>(this)->vector(s); }

ops::Weight Parameters::matrix(const ParamSpec& s) const {
  MAMBACPP_CHECK(s.kind == ParamKind::Matrix && s.shape.size() == 2);
  return ops::Weight{place(s), weight_dtype(weight_type_), s.shape[0], s.shape[1]};
}

float* Parameters::region(ParamKind kind) {
  Tensor& r = kind == ParamKind::Matrix ? matrices_ : vectors_;
  MAMBACPP_CHECK(r.dtype() == DType::F32);
  return r.mutable_data<float>();
}

const float* Parameters::region(ParamKind kind) const { return const_cast<Parameters*>(this)->region(kind); }

float* Parameters::matrix_f32(const ParamSpec& s) {
  MAMBACPP_CHECK(s.kind == ParamKind::Matrix && weight_type_ == WeightType::F32);
  return static_cast<float*>(place(s));
}

void Parameters::zero() {
  std::memset(vectors_.mutable_raw(), 0, vectors_.nbytes());
  std::memset(matrices_.mutable_raw(), 0, matrices_.nbytes());
}

void Parameters::assign_range(const ParamSpec& s, int64_t first, int64_t n, DType dtype, const void* values) {
  MAMBACPP_CHECK(first >= 0 && n >= 0 && first + n <= s.numel());
  const DType held = dtype_of(s);
  convert_floats(dtype, values, held, static_cast<std::byte*>(place(s)) + size_t(first) * dtype_size(held), n);
}

Tensor Parameters::export_tensor(const ParamSpec& s, DType dtype) const {
  Tensor t = Tensor::zeros(dtype, s.file_shape);
  convert_floats(dtype_of(s), place(s), dtype, t.mutable_raw(), s.numel());
  return t;
}

}  // namespace mambacpp
