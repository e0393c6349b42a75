#include "train/stateful.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace mambacpp {

StatefulRows::StatefulRows(const DocumentStream& stream, const MambaConfig& config, int64_t micro_batches,
                           int64_t rows, int64_t length)
    : stream_(&stream), rows_(rows), length_(length), cursors_(size_t(micro_batches * rows)), scratch_(config, int(rows)),
      n_layer_(config.n_layer), conv_per_lane_(config.d_inner * (config.d_conv - 1)),
      ssm_per_lane_(config.d_inner * config.d_state) {
  MAMBACPP_CHECK(micro_batches >= 1 && rows >= 1 && length >= 1);
  const int64_t lanes = micro_batches * rows;
  for (int64_t k = 0; k < lanes; ++k)
    cursors_[size_t(k)] = stream.next_document_start(k * stream.size() / lanes) % stream.size();
  for (int64_t m = 0; m < micro_batches; ++m) carried_.emplace_back(config, int(rows));
}

void StatefulRows::next(int64_t m, RowBatch& batch, LossOptions& options) {
  batch.resize(rows_, length_);
  for (int64_t b = 0; b < rows_; ++b) {
    int64_t& cursor = cursors_[size_t(m * rows_ + b)];
    stream_->fill(cursor, batch.row(b), true);
    cursor = (cursor + length_) % stream_->size();
  }
  options.positions = batch.positions.data();
  options.initial_state = &carried_[size_t(m)];
  options.final_state = &scratch_;
}

void StatefulRows::carry(int64_t m) { std::swap(carried_[size_t(m)], scratch_); }

namespace {

// Lane-major copies between the micro-batches' states [rows, ...] and one [lanes, ...] tensor.
template <class Get>
Tensor gather(const std::vector<InferenceState>& states, Get get, int64_t per_lane, Shape shape) {
  Tensor t = Tensor::zeros(DType::F32, std::move(shape));
  float* out = t.mutable_data<float>();
  for (const InferenceState& s : states) {
    const int64_t n = int64_t(s.batch()) * per_lane;
    std::memcpy(out, get(s), size_t(n) * sizeof(float));
    out += n;
  }
  return t;
}

}  // namespace

std::vector<std::pair<std::string, Tensor>> StatefulRows::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> tensors;
  Tensor cursors = Tensor::zeros(DType::I64, {lanes()});
  std::copy(cursors_.begin(), cursors_.end(), cursors.mutable_data<int64_t>());
  tensors.emplace_back("cursor", std::move(cursors));
  for (int64_t l = 0; l < n_layer_; ++l) {
    const int layer = int(l);
    tensors.emplace_back(cat("conv.", l), gather(carried_, [&](const InferenceState& s) { return s.conv(layer); },
                                                 conv_per_lane_, {lanes(), conv_per_lane_}));
    tensors.emplace_back(cat("ssm.", l), gather(carried_, [&](const InferenceState& s) { return s.ssm(layer); },
                                                ssm_per_lane_, {lanes(), ssm_per_lane_}));
  }
  return tensors;
}

void StatefulRows::restore(const SafetensorsFile& file, const std::string& source) {
  auto find = [&](const std::string& name, DType dtype, const Shape& shape) -> const Tensor& {
    const auto it = file.tensors.find(name);
    if (it == file.tensors.end()) fail(source, ": tensor ", name, " is missing");
    const Tensor& t = it->second;
    if (t.dtype() != dtype || t.shape() != shape)
      fail(source, ": tensor ", name, " is ", dtype_name(t.dtype()), " ", shape_str(t.shape()), ", expected ",
           dtype_name(dtype), " ", shape_str(shape), " (the run's lanes and model shape)");
    return t;
  };
  const Tensor& cursors = find("cursor", DType::I64, {lanes()});
  std::vector<int64_t> c(static_cast<size_t>(lanes()));  // copied: a mapped file's tensor need not be 8-byte aligned
  std::memcpy(c.data(), cursors.raw(), c.size() * sizeof(int64_t));
  for (int64_t k = 0; k < lanes(); ++k) {
    if (c[size_t(k)] < 0 || c[size_t(k)] >= stream_->size())
      fail(source, ": cursor ", c[size_t(k)], " of lane ", k, " is outside the training data (", stream_->size(), " tokens)");
    cursors_[size_t(k)] = c[size_t(k)];
  }
  for (int64_t l = 0; l < n_layer_; ++l) {
    const int layer = int(l);
    const float* conv = find(cat("conv.", l), DType::F32, {lanes(), conv_per_lane_}).data<float>();
    const float* ssm = find(cat("ssm.", l), DType::F32, {lanes(), ssm_per_lane_}).data<float>();
    for (InferenceState& s : carried_) {
      std::memcpy(s.conv(layer), conv, size_t(s.batch() * conv_per_lane_) * sizeof(float));
      std::memcpy(s.ssm(layer), ssm, size_t(s.batch() * ssm_per_lane_) * sizeof(float));
      conv += s.batch() * conv_per_lane_;
      ssm += s.batch() * ssm_per_lane_;
    }
  }
  const size_t expected = 1 + 2 * size_t(n_layer_);
  if (file.tensors.size() != expected)
    fail(source, ": holds ", file.tensors.size(), " tensors, expected ", expected, " (cursor, conv.<l>, ssm.<l>)");
}

}  // namespace mambacpp
