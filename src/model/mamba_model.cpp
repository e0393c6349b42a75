#include "model/mamba_model.h"
#include "model/model_impl.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <sys/mman.h>
#include <unistd.h>

#include "core/rng.h"
#include "ops/ops.h"

namespace mambacpp {

// ---------------------------------------------------------------------------------------------
// InferenceState

InferenceState::InferenceState(const MambaConfig& c, int batch)
    : batch_(batch),
      conv_per_layer_(int64_t(batch) * c.d_inner * (c.d_conv - 1)),
      ssm_per_layer_(int64_t(batch) * c.d_inner * c.d_state),
      conv_(size_t(conv_per_layer_ * c.n_layer)),
      ssm_(size_t(ssm_per_layer_ * c.n_layer)),
      n_layer_(c.n_layer) {
  MAMBACPP_CHECK(batch >= 1);
}

void InferenceState::reset() {
  std::fill(conv_.begin(), conv_.end(), 0.0f);
  std::fill(ssm_.begin(), ssm_.end(), 0.0f);
}

void InferenceState::reset_slot(int b) {
  MAMBACPP_CHECK(b >= 0 && b < batch_);
  const int64_t conv_slot = conv_per_layer_ / batch_, ssm_slot = ssm_per_layer_ / batch_;
  for (int64_t l = 0; l < n_layer_; ++l) {
    std::fill_n(conv(int(l)) + b * conv_slot, conv_slot, 0.0f);
    std::fill_n(ssm(int(l)) + b * ssm_slot, ssm_slot, 0.0f);
  }
}

void InferenceState::copy_slot(const InferenceState& from, int from_slot, int to_slot) {
  MAMBACPP_CHECK(from_slot >= 0 && from_slot < from.batch_ && to_slot >= 0 && to_slot < batch_);
  const int64_t conv_slot = conv_per_layer_ / batch_, ssm_slot = ssm_per_layer_ / batch_;
  MAMBACPP_CHECK(from.n_layer_ == n_layer_ && from.conv_per_layer_ / from.batch_ == conv_slot &&
                 from.ssm_per_layer_ / from.batch_ == ssm_slot);
  for (int64_t l = 0; l < n_layer_; ++l) {
    std::copy_n(from.conv(int(l)) + from_slot * conv_slot, conv_slot, conv(int(l)) + to_slot * conv_slot);
    std::copy_n(from.ssm(int(l)) + from_slot * ssm_slot, ssm_slot, ssm(int(l)) + to_slot * ssm_slot);
  }
}

namespace {

// Re-lays out `layers` blocks of `slot` x old_batch floats as blocks of slot x new_batch floats
// (the first min(old, new) slots of each block kept, the rest zeroed), growing `v` if needed.
void relayout_slots(std::vector<float>& v, int64_t layers, int64_t slot, int old_batch, int new_batch) {
  const int64_t old_block = slot * old_batch, new_block = slot * new_batch, kept = slot * std::min(old_batch, new_batch);
  if (v.size() < size_t(layers * new_block)) v.resize(size_t(layers * new_block));
  // Moving blocks towards the start goes front to back, towards the end back to front, so no block
  // is overwritten before it moved.
  for (int64_t i = 0; i < layers; ++i) {
    const int64_t l = new_block <= old_block ? i : layers - 1 - i;
    std::memmove(v.data() + l * new_block, v.data() + l * old_block, size_t(kept) * sizeof(float));
    std::fill_n(v.data() + l * new_block + kept, new_block - kept, 0.0f);
  }
}

}  // namespace

void InferenceState::set_batch(int batch) {
  MAMBACPP_CHECK(batch >= 1 && batch_ >= 1);
  if (batch == batch_) return;
  const int64_t conv_slot = conv_per_layer_ / batch_, ssm_slot = ssm_per_layer_ / batch_;
  relayout_slots(conv_, n_layer_, conv_slot, batch_, batch);
  relayout_slots(ssm_, n_layer_, ssm_slot, batch_, batch);
  conv_per_layer_ = conv_slot * batch;
  ssm_per_layer_ = ssm_slot * batch;
  batch_ = batch;
}

size_t InferenceState::bytes() const { return size_t((conv_per_layer_ + ssm_per_layer_) * n_layer_) * sizeof(float); }

float* InferenceState::conv(int layer) {
  MAMBACPP_CHECK(layer >= 0 && layer < n_layer_);
  return conv_.data() + layer * conv_per_layer_;
}
float* InferenceState::ssm(int layer) {
  MAMBACPP_CHECK(layer >= 0 && layer < n_layer_);
  return ssm_.data() + layer * ssm_per_layer_;
}
const float* InferenceState::conv(int layer) const { return const_cast<InferenceState*>(this)->conv(layer); }
const float* InferenceState::ssm(int layer) const { return const_cast<InferenceState*>(this)->ssm(layer); }

// ---------------------------------------------------------------------------------------------
// The model

namespace {

void check_config(const MambaConfig& c, const std::string& source) {
  const std::pair<const char*, int64_t> dims[] = {{"vocab_size", c.vocab_size}, {"d_model", c.d_model},
                                                  {"n_layer", c.n_layer},       {"d_state", c.d_state},
                                                  {"d_inner", c.d_inner},       {"d_conv", c.d_conv},
                                                  {"dt_rank", c.dt_rank}};
  for (const auto& [name, value] : dims)
    if (value < 1) fail(source, ": ", name, " must be at least 1, got ", value);
  if (c.vocab_size > INT32_MAX) fail(source, ": vocab_size ", c.vocab_size, " does not fit 32-bit token ids");
}

}  // namespace

// Resolves every layer's pointers and derives A = -exp(A_log). Call after the values change.
void MambaModel::Impl::bind() {
  const ParameterTable& table = params.table();
  auto vec = [&](ParamRole role, int layer) -> const float* {
    const ParamSpec* s = table.find(role, layer);
    return s ? params.vector(*s) : nullptr;
  };
  auto mat = [&](ParamRole role, int layer) { return params.matrix(*table.find(role, layer)); };
  const int64_t EN = config.d_inner * config.d_state;
  A.resize(size_t(config.n_layer * EN));
  layers.resize(size_t(config.n_layer));
  for (int l = 0; l < int(config.n_layer); ++l) {
    const float* a_log = vec(ParamRole::ALog, l);
    float* a = A.data() + l * EN;
    for (int64_t i = 0; i < EN; ++i) a[i] = -std::exp(a_log[i]);
    LayerWeights& w = layers[size_t(l)];
    w.norm = vec(ParamRole::Norm, l);
    w.in_proj = mat(ParamRole::InProjWeight, l);
    w.in_bias = vec(ParamRole::InProjBias, l);
    w.conv_weight = vec(ParamRole::ConvWeight, l);
    w.conv_bias = vec(ParamRole::ConvBias, l);
    w.x_proj = mat(ParamRole::XProjWeight, l);
    w.dt_proj = mat(ParamRole::DtProjWeight, l);
    w.dt_bias = vec(ParamRole::DtBias, l);
    w.A = a;
    w.D = vec(ParamRole::D, l);
    w.out_proj = mat(ParamRole::OutProjWeight, l);
    w.out_bias = vec(ParamRole::OutProjBias, l);
  }
  embedding = mat(ParamRole::Embedding, -1);
  lm_head = config.tie_embeddings ? embedding : mat(ParamRole::LmHead, -1);
  norm_f = vec(ParamRole::NormF, -1);
}

void MambaModel::Impl::reserve(int64_t rows) {
  if (rows <= ws.rows) return;
  const int64_t D = config.d_model, E = config.d_inner, BC = config.dt_rank + 2 * config.d_state;
  ArenaPlan plan;
  plan.add(&ws.resid, rows * D);
  plan.add(&ws.normed, rows * D);
  plan.add(&ws.xz, rows * 2 * E);
  plan.add(&ws.xc, rows * E);
  plan.add(&ws.dbc, rows * BC);
  plan.add(&ws.dt, rows * E);
  plan.add(&ws.ids, rows);
  plan.add(&ws.targets, rows);
  plan.add(&ws.positions, rows);
  plan.allocate(ws.buffer);
  ws.rows = rows;
}

int64_t MambaModel::Impl::chunk_for(int batch) const {
  return std::max<int64_t>(1, std::min(chunk_length, kMaxChunkRows / batch));
}

void MambaModel::Impl::check_tokens(const int32_t* tokens, int batch, int64_t length) const {
  for (int b = 0; b < batch; ++b)
    for (int64_t t = 0; t < length; ++t) {
      const int32_t id = tokens[b * length + t];
      if (id < 0 || id >= config.vocab_size)
        fail("token id ", id, " (sequence ", b, ", position ", t, ") is outside the vocabulary of ",
             config.vocab_size, " tokens");
    }
}

ops::ConvArgs MambaModel::Impl::conv_args(const LayerWeights& w, const MixerBuffers& buf, int batch, int64_t len,
                                          float* conv_state) const {
  const int64_t E = config.d_inner;
  ops::ConvArgs conv;
  conv.batch = batch;
  conv.length = len;
  conv.channels = E;
  conv.width = int(config.d_conv);
  conv.x = buf.xz;
  conv.x_ld = 2 * E;
  conv.weight = w.conv_weight;
  conv.bias = w.conv_bias;
  conv.state = conv_state;
  conv.out = buf.xc;
  conv.out_ld = E;
  conv.positions = buf.positions;
  return conv;
}

ops::ScanArgs MambaModel::Impl::scan_args(const LayerWeights& w, const MixerBuffers& buf, int batch, int64_t len,
                                          float* ssm_state) const {
  const int64_t E = config.d_inner, N = config.d_state, R = config.dt_rank;
  ops::ScanArgs scan;
  scan.batch = batch;
  scan.length = len;
  scan.d_inner = E;
  scan.d_state = N;
  scan.x = buf.xc;
  scan.x_ld = E;
  scan.dt = buf.dt;
  scan.dt_ld = E;
  scan.dt_bias = w.dt_bias;
  scan.A = w.A;
  scan.Bm = buf.dbc + R;
  scan.Cm = buf.dbc + R + N;
  scan.bc_ld = R + 2 * N;
  scan.D = w.D;
  scan.z = buf.xz + E;
  scan.z_ld = 2 * E;
  scan.state = ssm_state;
  scan.y = buf.y;
  scan.y_ld = buf.y_ld;
  scan.checkpoints = buf.checkpoints;
  scan.checkpoint_every = buf.checkpoint_every;
  scan.positions = buf.positions;
  return scan;
}

// One Mamba mixer over `buf.normed`; adds its output to buf.resid.
void MambaModel::Impl::mixer(const LayerWeights& w, int batch, int64_t len, const MixerBuffers& buf,
                             float* conv_state, float* ssm_state) {
  const int64_t T = batch * len, D = config.d_model, E = config.d_inner, N = config.d_state,
                R = config.dt_rank, BC = R + 2 * N;
  ops::linear(buf.normed, D, T, w.in_proj, w.in_bias, buf.xz, 2 * E, false);
  ops::causal_conv1d_silu(conv_args(w, buf, batch, len, conv_state));

  // Falcon-Mamba: a weightless RMSNorm of dt_low, B and C, each on its own; in place for
  // inference, from dbc_raw (kept for the backward) in training.
  float* dbc_in = config.falcon() && buf.dbc_raw ? buf.dbc_raw : buf.dbc;
  ops::linear(buf.xc, E, T, w.x_proj, nullptr, dbc_in, BC, false);
  if (config.falcon())
    for (const auto& [first, width] : falcon_norm_spans(config))
      ops::rmsnorm(dbc_in + first, BC, T, width, nullptr, float(config.mixer_rms_eps), buf.dbc + first, BC);
  ops::linear(buf.dbc, BC, T, w.dt_proj, nullptr, buf.dt, E, false);  // dt_bias goes into the scan

  ops::selective_scan(scan_args(w, buf, batch, len, ssm_state));
  ops::linear(buf.y, buf.y_ld, T, w.out_proj, w.out_bias, buf.resid, D, true);
}

void MambaModel::Impl::run_layers(int batch, int64_t len, InferenceState& state, const int32_t* positions) {
  const int64_t T = batch * len, D = config.d_model;
  const float eps = float(config.norm_eps);
  ops::embedding(ws.ids, T, embedding, ws.resid, D);
  MixerBuffers buffers;
  buffers.normed = ws.normed;
  buffers.xz = ws.xz;
  buffers.xc = ws.xc;
  buffers.dbc = ws.dbc;
  buffers.dt = ws.dt;
  buffers.y = ws.xz;  // x's columns are free once the conv has read them
  buffers.y_ld = 2 * config.d_inner;
  buffers.resid = ws.resid;
  buffers.positions = positions;
  for (int l = 0; l < int(config.n_layer); ++l) {
    const LayerWeights& w = layers[size_t(l)];
    ops::rmsnorm(ws.resid, D, T, D, w.norm, eps, ws.normed, D);
    mixer(w, batch, len, buffers, state.conv(l), state.ssm(l));
  }
}

// The chunk holds positions [t0, t0 + len) of each sequence of `length` tokens.
void MambaModel::Impl::write_outputs(int batch, int64_t len, int64_t t0, int64_t length, LogitsMode mode,
                                     float* logits, float* hidden) {
  const int64_t T = batch * len, D = config.d_model, V = config.vocab_size;
  const float eps = float(config.norm_eps);
  const bool last_chunk = t0 + len == length;
  const bool all_rows = hidden != nullptr || mode == LogitsMode::All;
  if (all_rows) ops::rmsnorm(ws.resid, D, T, D, norm_f, eps, ws.normed, D);
  if (hidden)
    for (int b = 0; b < batch; ++b)
      std::memcpy(hidden + (b * length + t0) * D, ws.normed + b * len * D, size_t(len * D) * sizeof(float));
  if (mode == LogitsMode::All) {
    // The chunk's rows of one sequence are contiguous in `logits`; so are all rows when the chunk
    // spans whole sequences.
    const bool contiguous = len == length || batch == 1;
    for (int b = 0; b < (contiguous ? 1 : batch); ++b)
      ops::linear(ws.normed + b * len * D, D, contiguous ? T : len, lm_head, nullptr,
                  logits + (b * length + t0) * V, V, false);
  }
  if (mode == LogitsMode::Last && last_chunk) {
    // Only the last position of each sequence: rows len-1, 2len-1, ... (stride len*D).
    const float* last = ws.normed + (len - 1) * D;
    if (!all_rows) {
      ops::rmsnorm(ws.resid + (len - 1) * D, len * D, batch, D, norm_f, eps, ws.normed, D);
      last = ws.normed;
    }
    ops::linear(last, all_rows ? len * D : D, batch, lm_head, nullptr, logits, V, false);
  }
}

void MambaModel::Impl::forward(const int32_t* tokens, int batch, int64_t length, InferenceState& state,
                               LogitsMode mode, float* logits, float* hidden) {
  const int64_t E = config.d_inner;
  MAMBACPP_CHECK(batch >= 1 && length >= 0 && state.batch() == batch);
  MAMBACPP_CHECK(state.bytes() ==
                 size_t(batch * config.n_layer * E * (config.d_conv - 1 + config.d_state)) * sizeof(float));
  MAMBACPP_CHECK(mode == LogitsMode::None || logits != nullptr);
  if (mode == LogitsMode::Last && length == 0) fail("no tokens to compute logits for: the input is empty");
  check_tokens(tokens, batch, length);
  if (length == 0) return;

  const int64_t chunk = std::min(length, chunk_for(batch));
  reserve(batch * chunk);
  for (int64_t t0 = 0; t0 < length; t0 += chunk) {
    const int64_t len = std::min(chunk, length - t0);
    for (int b = 0; b < batch; ++b) std::copy_n(tokens + b * length + t0, len, ws.ids + b * len);
    run_layers(batch, len, state);
    write_outputs(batch, len, t0, length, mode, logits, hidden);
  }
}

// ---------------------------------------------------------------------------------------------
// Construction: loading and random weights

namespace {

// Which held type to use when the caller did not say: the file's own if every matrix is BF16,
// or every matrix F16; else F32.
WeightType infer_weight_type(const ParameterTable& table, const std::vector<const Tensor*>& found) {
  bool all_bf16 = true, all_f16 = true;
  for (size_t i = 0; i < table.specs().size(); ++i) {
    if (table.specs()[i].kind != ParamKind::Matrix) continue;
    all_bf16 = all_bf16 && found[i]->dtype() == DType::BF16;
    all_f16 = all_f16 && found[i]->dtype() == DType::F16;
  }
  return all_bf16 ? WeightType::BF16 : all_f16 ? WeightType::F16 : WeightType::F32;
}

// Equal values, whatever the two dtypes (both float, same shape).
bool same_values(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  if (a.dtype() == b.dtype())  // one storage (mamba_ssm's tie) or equal bytes
    return a.raw() == b.raw() || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
  const Tensor fa = a.to(DType::F32), fb = b.to(DType::F32);
  return std::memcmp(fa.raw(), fb.raw(), fa.nbytes()) == 0;
}

// Maps the file's tensors onto the table (either spelling) and validates names, dtypes and shapes.
// Returns, per spec, the tensor to load.
std::vector<const Tensor*> match_tensors(const MambaConfig& config, const ParameterTable& table,
                                         const TensorMap& tensors, const std::string& source) {
  const auto& specs = table.specs();
  std::vector<const Tensor*> found(specs.size(), nullptr);
  std::vector<std::string> found_name(specs.size());
  const Tensor* tied_head = nullptr;
  for (const auto& [name, tensor] : tensors) {
    const ParamSpec* s = table.find(name);
    if (!s) {
      if (name == "lm_head.weight" && config.tie_embeddings) {  // mamba_ssm stores the tied head too
        tied_head = &tensor;
        continue;
      }
      fail(source, ": unexpected tensor '", name, "' (not part of a ", config.model_type, " model with ",
           config.n_layer, " layers and this config)");
    }
    const size_t i = size_t(s - specs.data());
    if (found[i]) fail(source, ": tensor '", s->name, "' is present twice, as '", found_name[i], "' and '", name, "'");
    if (!is_float(tensor.dtype()))
      fail(source, ": tensor '", name, "' has dtype ", dtype_name(tensor.dtype()),
           "; weights must be F32, F16, BF16 or F64");
    if (tensor.shape() != s->file_shape)
      fail(source, ": tensor '", name, "' has shape ", shape_str(tensor.shape()), " but the config expects ",
           shape_str(s->file_shape));
    found[i] = &tensor;
    found_name[i] = name;
  }
  for (size_t i = 0; i < specs.size(); ++i)
    if (!found[i]) fail(source, ": tensor '", specs[i].name, "' is missing (expected shape ", shape_str(specs[i].file_shape), ")");
  if (tied_head) {
    const Tensor& embedding = *found[size_t(table.find(ParamRole::Embedding) - specs.data())];
    if (!is_float(tied_head->dtype()) || !same_values(*tied_head, embedding))
      fail(source, ": tensor 'lm_head.weight' differs from the embedding, but the config ties them "
                   "(tie_word_embeddings / tie_embeddings is true)");
  }
  return found;
}

// A well-mixed seed per (model seed, tensor, block), so blocks fill in parallel reproducibly.
uint64_t mix_seed(uint64_t a, uint64_t b) {
  uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// N(0, std^2) by Marsaglia's polar method: two values per accepted pair, one log, no trig.
void fill_normal(Rng& rng, float std, float* out, int64_t n) {
  for (int64_t i = 0; i < n;) {
    float u, v, s;
    do {  // u, v uniform in [-1, 1) from 24 bits each of one draw
      const uint64_t bits = rng.next_u64();
      u = float(int32_t(bits >> 40) - (1 << 23)) * 0x1p-23f;
      v = float(int32_t((bits >> 8) & 0xffffff) - (1 << 23)) * 0x1p-23f;
      s = u * u + v * v;
    } while (s >= 1.0f || s == 0.0f);
    const float f = std * std::sqrt(-2.0f * std::log(s) / s);
    out[i++] = u * f;
    if (i < n) out[i++] = v * f;
  }
}

void fill_uniform(Rng& rng, float lo, float hi, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = lo + (hi - lo) * float(rng.uniform());
}

// Values of elements [first, first + n) of `s` under HF-like initialisation (MambaPreTrainedModel
// with N(0, 0.02) linears and embedding, out_proj scaled by 1/sqrt(n_layer), PyTorch's default
// conv init, dt bias and A_log as mamba_ssm draws them).
void init_block(const MambaConfig& c, const ParamSpec& s, int64_t first, Rng& rng, float* out, int64_t n) {
  switch (s.role) {
    case ParamRole::Embedding:
    case ParamRole::InProjWeight:
    case ParamRole::XProjWeight:
    case ParamRole::LmHead: return fill_normal(rng, 0.02f, out, n);
    case ParamRole::OutProjWeight:  // GPT-2's pre-norm residual rescaling, as mamba_ssm does it
      return fill_normal(rng, float(0.02 / std::sqrt(double(c.n_layer))), out, n);
    case ParamRole::DtProjWeight: {
      const float bound = float(1.0 / std::sqrt(double(c.dt_rank)));
      return fill_uniform(rng, -bound, bound, out, n);
    }
    case ParamRole::ConvWeight:
    case ParamRole::ConvBias: {  // kaiming_uniform(a=sqrt(5)) / bias: both 1/sqrt(fan_in), fan_in = W
      const float bound = float(1.0 / std::sqrt(double(c.d_conv)));
      return fill_uniform(rng, -bound, bound, out, n);
    }
    case ParamRole::DtBias:  // softplus^-1 of dt, log-uniform in [time_step_min, time_step_max]
      for (int64_t i = 0; i < n; ++i) {
        const double lo = std::log(c.time_step_min), hi = std::log(c.time_step_max);
        const double dt = std::max(std::exp(lo + (hi - lo) * rng.uniform()), c.time_step_floor);
        out[i] = float(dt + std::log(-std::expm1(-dt)));
      }
      return;
    case ParamRole::ALog:  // row e: log(1), ..., log(N)
      for (int64_t i = 0; i < n; ++i) out[i] = float(std::log(double((first + i) % c.d_state + 1)));
      return;
    case ParamRole::InProjBias:
    case ParamRole::OutProjBias: std::fill_n(out, n, 0.0f); return;
    case ParamRole::D:
    case ParamRole::Norm:
    case ParamRole::NormF: std::fill_n(out, n, 1.0f); return;
  }
  MAMBACPP_CHECK(false);
}

// Hands the whole pages inside [p, p + n) back to the kernel. Used on a checkpoint's mapped file
// once its values are copied, so a load peaks near the model's size instead of twice it.
// MADV_PAGEOUT never loses data (clean file pages are re-read if touched again).
void release_pages(const void* p, size_t n) {
#ifdef MADV_PAGEOUT
  static const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (uintptr_t(p) + page - 1) / page * page, end = (uintptr_t(p) + n) / page * page;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_PAGEOUT);
#endif
}

// Copies (converting) every matched tensor into the parameters, in blocks, releasing each
// block's source pages after it when `release_sources`.
void copy_parameters(Parameters& params, const std::vector<const Tensor*>& found, bool release_sources) {
  constexpr int64_t kBlock = int64_t(1) << 20;  // elements: the pages in flight
  const auto& specs = params.table().specs();
  for (size_t i = 0; i < specs.size(); ++i) {
    const Tensor& t = *found[i];
    const auto* src = static_cast<const std::byte*>(t.raw());
    const size_t size = dtype_size(t.dtype());
    for (int64_t first = 0; first < t.numel(); first += kBlock) {
      const int64_t n = std::min(kBlock, t.numel() - first);
      params.assign_range(specs[i], first, n, t.dtype(), src + size_t(first) * size);
      if (release_sources) release_pages(src + size_t(first) * size, size_t(n) * size);
    }
  }
}

}  // namespace

MambaModel MambaModel::from_tensors(const MambaConfig& config, const TensorMap& tensors, const std::string& source,
                                    const LoadOptions& options) {
  return from_tensors_impl(config, tensors, source, options, false);
}

MambaModel MambaModel::load(const std::filesystem::path& dir, const LoadOptions& options) {
  const Checkpoint checkpoint = read_checkpoint(dir);
  // io maps safetensors files (its tensors are views of the mapping) but reads PyTorch zips into
  // memory, which releasing would only push to swap.
  const bool mapped = std::filesystem::path(checkpoint.weights_file).extension() != ".bin";
  return from_tensors_impl(checkpoint.config, checkpoint.tensors, checkpoint.weights_file, options, mapped);
}

MambaModel MambaModel::from_tensors_impl(const MambaConfig& config, const TensorMap& tensors,
                                         const std::string& source, const LoadOptions& options,
                                         bool release_sources) {
  check_config(config, source);
  const ParameterTable table(config);
  const std::vector<const Tensor*> found = match_tensors(config, table, tensors, source);
  auto impl = std::make_unique<Impl>(config, options.weights.value_or(infer_weight_type(table, found)));
  copy_parameters(impl->params, found, release_sources);
  impl->bind();
  return MambaModel(std::move(impl));
}

MambaModel MambaModel::random(const MambaConfig& config, uint64_t seed, WeightType weights) {
  check_config(config, "random model config");
  auto impl = std::make_unique<Impl>(config, weights);
  Parameters& params = impl->params;
  // Work items of at most kBlock elements, each with its own generator: parallel and
  // reproducible whatever the thread count.
  constexpr int64_t kBlock = int64_t(1) << 16;
  struct Item {
    const ParamSpec* spec;
    int64_t first, n;
    uint64_t seed;
  };
  std::vector<Item> items;
  const auto& specs = params.table().specs();
  for (size_t i = 0; i < specs.size(); ++i)
    for (int64_t first = 0; first < specs[i].numel(); first += kBlock)
      items.push_back({&specs[i], first, std::min(kBlock, specs[i].numel() - first),
                       mix_seed(mix_seed(seed, i), uint64_t(first))});
#pragma omp parallel
  {
    std::vector<float> values(static_cast<size_t>(kBlock));
#pragma omp for schedule(dynamic)
    for (size_t k = 0; k < items.size(); ++k) {
      const Item& it = items[k];
      Rng rng(it.seed);
      init_block(config, *it.spec, it.first, rng, values.data(), it.n);
      params.assign_range(*it.spec, it.first, it.n, DType::F32, values.data());
    }
  }
  impl->bind();
  return MambaModel(std::move(impl));
}

MambaModel::MambaModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MambaModel::MambaModel(MambaModel&&) noexcept = default;
MambaModel& MambaModel::operator=(MambaModel&&) noexcept = default;
MambaModel::~MambaModel() = default;

const MambaConfig& MambaModel::config() const { return impl_->config; }
int64_t MambaModel::parameter_count() const { return impl_->params.table().parameter_count(); }
size_t MambaModel::weight_bytes() const { return impl_->params.bytes() + impl_->A.size() * sizeof(float); }
WeightType MambaModel::weight_type() const { return impl_->params.weight_type(); }

std::vector<std::pair<std::string, Tensor>> MambaModel::hf_tensors(DType dtype) const {
  if (dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16)
    fail("cannot save weights as ", dtype_name(dtype), ": use F32, F16 or BF16");
  std::vector<std::pair<std::string, Tensor>> out;
  for (const ParamSpec& s : impl_->params.table().specs()) out.emplace_back(s.name, impl_->params.export_tensor(s, dtype));
  return out;
}

void MambaModel::forward(const int32_t* tokens, int batch, int64_t length, InferenceState& state, LogitsMode mode,
                         float* logits, float* hidden) {
  impl_->forward(tokens, batch, length, state, mode, logits, hidden);
}

void MambaModel::step(const int32_t* tokens, InferenceState& state, float* logits) {
  impl_->forward(tokens, state.batch(), 1, state, LogitsMode::Last, logits, nullptr);
}

void MambaModel::set_chunk_length(int64_t tokens) {
  if (tokens < 1) fail("chunk length must be at least 1 token, got ", tokens);
  impl_->chunk_length = tokens;
}
int64_t MambaModel::chunk_length() const { return impl_->chunk_length; }
size_t MambaModel::workspace_bytes() const { return impl_->ws.buffer.nbytes(); }

}  // namespace mambacpp
