// The one table of Mamba parameters: for each tensor its role, HF name (and mamba_ssm spelling
// where it differs), shape in memory and in files, whether it is a matrix (used by linear /
// embedding, held in the chosen WeightType) or a vector (everything used element-wise, always
// fp32: norms, biases, conv weight, A_log, D), and its offset in that kind's flat region.
// Loading, saving (hf_tensors), parameter counting and later gradients and AdamW all walk it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "io/config.h"
#include "ops/ops.h"

namespace mambacpp {

enum class WeightType { F32, BF16, F16 };  // how the matrices are held in memory
std::string_view weight_type_name(WeightType t);
DType weight_dtype(WeightType t);

enum class ParamRole {
  Embedding, Norm, InProjWeight, InProjBias, ConvWeight, ConvBias, XProjWeight, DtProjWeight, DtBias,
  ALog, D, OutProjWeight, OutProjBias, NormF, LmHead,
};
inline constexpr int kParamRoleCount = int(ParamRole::LmHead) + 1;

enum class ParamKind { Matrix, Vector };

struct ParamSpec {
  ParamRole role;
  int layer = -1;          // -1 for the tensors outside the layers
  std::string name;        // Hugging Face name
  std::string alt_name;    // mamba_ssm spelling where it differs, else empty
  Shape shape;             // as held in memory (conv weight: [E, W])
  Shape file_shape;        // as in checkpoint files (conv weight: [E, 1, W])
  ParamKind kind = ParamKind::Vector;
  int64_t offset = 0;      // in elements, into its kind's region
  int64_t numel() const { return checked_numel(shape, name); }
};

class ParameterTable {
 public:
  ParameterTable() = default;
  explicit ParameterTable(const MambaConfig& config);

  const std::vector<ParamSpec>& specs() const { return specs_; }
  // The spec of a role (layer -1 for global ones); null when the config has no such tensor
  // (a bias that is off, lm_head when tied).
  const ParamSpec* find(ParamRole role, int layer = -1) const;
  // By checkpoint name, in either spelling.
  const ParamSpec* find(std::string_view file_name) const;
  // Elements of each region, including the padding that aligns every tensor's start.
  int64_t region_elements(ParamKind kind) const { return kind == ParamKind::Matrix ? matrix_elements_ : vector_elements_; }
  int64_t parameter_count() const;  // real elements (a tied embedding once)

 private:
  void add(ParamRole role, int layer, std::string name, Shape shape, ParamKind kind, std::string alt_name = {},
           Shape file_shape = {});

  std::vector<ParamSpec> specs_;
  std::vector<int> index_;  // (layer + 1) * kParamRoleCount + role -> spec index or -1
  int64_t matrix_elements_ = 0, vector_elements_ = 0;
};

// Converts n floats between float dtypes (F32, F16, BF16, F64); the source may be unaligned
// (mapped files). Round to nearest even.
void convert_floats(DType from, const void* src, DType to, void* dst, int64_t n);

// The parameter values: one fp32 region for vectors and one region for matrices in the weight
// type, laid out by the table.
class Parameters {
 public:
  Parameters() = default;
  Parameters(const MambaConfig& config, WeightType weights);
  // Move-only: a copy would share the buffers (Tensor copies share data).
  Parameters(Parameters&&) = default;
  Parameters& operator=(Parameters&&) = default;
  Parameters(const Parameters&) = delete;
  Parameters& operator=(const Parameters&) = delete;

  const ParameterTable& table() const { return table_; }
  WeightType weight_type() const { return weight_type_; }
  size_t bytes() const { return vectors_.nbytes() + matrices_.nbytes(); }

  float* vector(const ParamSpec& s);
  const float* vector(const ParamSpec& s) const;
  ops::Weight matrix(const ParamSpec& s) const;  // [shape[0], shape[1]] in the weight type
  // A whole region (matrix region only when the weight type is F32), for passes over every
  // parameter at once: gradients, AdamW moments and the optimizer share this layout.
  float* region(ParamKind kind);
  const float* region(ParamKind kind) const;
  // A matrix's values when held in F32 (training): [shape[0], shape[1]].
  float* matrix_f32(const ParamSpec& s);
  // Sets every value to zero.
  void zero();
  // Writes s's values (all of them, or elements [first, first + n)), given in `dtype`, converting.
  void assign(const ParamSpec& s, DType dtype, const void* values) { assign_range(s, 0, s.numel(), dtype, values); }
  void assign_range(const ParamSpec& s, int64_t first, int64_t n, DType dtype, const void* values);
  // A new tensor of s's file shape holding its values as `dtype`.
  Tensor export_tensor(const ParamSpec& s, DType dtype) const;

 private:
  void* place(const ParamSpec& s);
  const void* place(const ParamSpec& s) const;
  DType dtype_of(const ParamSpec& s) const;

  ParameterTable table_;
  WeightType weight_type_ = WeightType::F32;
  Tensor vectors_, matrices_;
};

}  // namespace mambacpp
