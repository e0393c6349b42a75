// The inside of MambaModel, shared by its two source files: mamba_model.cpp (loading, inference
// forward and step) and mamba_train.cpp (the training forward that keeps activations, the
// backward, the loss). Not part of the model layer's interface.
#pragma once

#include <array>
#include <utility>
#include <vector>

#include "model/mamba_model.h"
#include "ops/ops.h"

namespace mambacpp {

// Lays buffers out one after another in a single allocation, each start 64-byte aligned: the
// workspaces are planned as a list of (slot, element count), then allocated once.
class ArenaPlan {
 public:
  void add(float** slot, int64_t count) { slots_.push_back({slot, count}); }
  void add(int32_t** slot, int64_t count) { slots_.push_back({reinterpret_cast<float**>(slot), count}); }
  int64_t floats() const {
    int64_t total = 0;
    for (const Slot& s : slots_) total += aligned(s.count);
    return total;
  }
  // Allocates (zeroed) and points every slot into it; `into` is released first, so peak memory
  // is the new size only.
  void allocate(Tensor& into) const {
    into = Tensor();
    into = Tensor::zeros(DType::F32, {floats()});
    float* p = into.mutable_data<float>();
    for (const Slot& s : slots_) {
      *s.slot = p;
      p += aligned(s.count);
    }
  }

 private:
  static int64_t aligned(int64_t count) { return (count + 15) / 16 * 16; }  // int32 and float: 4 bytes
  struct Slot {
    float** slot;
    int64_t count;
  };
  std::vector<Slot> slots_;
};

// Pointers to one layer's parameters, resolved once from the table.
struct LayerWeights {
  const float* norm = nullptr;
  ops::Weight in_proj;
  const float* in_bias = nullptr;  // may be null
  const float* conv_weight = nullptr;
  const float* conv_bias = nullptr;  // may be null
  ops::Weight x_proj, dt_proj;
  const float* dt_bias = nullptr;
  const float* A = nullptr;  // -exp(A_log)
  const float* D = nullptr;
  ops::Weight out_proj;
  const float* out_bias = nullptr;  // may be null
};

// Where one mixer call reads and writes, for `rows` = batch x len tokens. Inference points these
// into its reused chunk workspace (y overwrites x's columns of xz, Falcon's norms run in place);
// training points them into the layer's saved activations.
struct MixerBuffers {
  const float* normed = nullptr;  // [rows, D] input (RMSNorm output)
  float* xz = nullptr;            // [rows, 2E] in_proj output: x | z
  float* xc = nullptr;            // [rows, E]  conv + SiLU output
  float* dbc_raw = nullptr;       // [rows, R + 2N] x_proj output before Falcon's norms (training only)
  float* dbc = nullptr;           // [rows, R + 2N] dt_low | B | C as the scan reads them
  float* dt = nullptr;            // [rows, E]  dt_proj output (before bias and softplus)
  float* y = nullptr;             // gated scan output, at ld y_ld
  int64_t y_ld = 0;
  float* resid = nullptr;         // [rows, D] the residual stream the output is added to
  float* checkpoints = nullptr;   // scan states for the backward (training only)
  int64_t checkpoint_every = 0;
  const int32_t* positions = nullptr;  // [rows] each token's position in its document, or null (ops.h)
};

// The activations of one chunk of `rows` = batch x chunk tokens (row b * len + t). Grows only,
// so once sized for a (batch, chunk) it is reused by every later call, step() included.
struct Workspace {
  Tensor buffer;
  int64_t rows = 0;
  float* resid = nullptr;   // [rows, D]  residual stream
  float* normed = nullptr;  // [rows, D]  RMSNorm output (per layer, then the final norm)
  float* xz = nullptr;      // [rows, 2E] in_proj output: x | z; the scan's y overwrites x
  float* xc = nullptr;      // [rows, E]  conv + SiLU output
  float* dbc = nullptr;     // [rows, R + 2N] x_proj output: dt_low | B | C
  float* dt = nullptr;      // [rows, E]  dt_proj output (before bias and softplus)
  int32_t* ids = nullptr;   // [rows]     the chunk's tokens
  int32_t* targets = nullptr;  // [rows]  the chunk's targets (loss without gradients)
  int32_t* positions = nullptr;  // [rows] the chunk's positions (loss without gradients, packed rows)
  std::vector<float> cross_entropy_scratch;
};

// Everything the backward needs for one (batch, length), planned and allocated at once
// (mamba_train.cpp lays it out): per layer the residual stream entering it and the mixer's
// activations, the scan's saved states, and the gradient buffers shared by all layers.
struct TrainWorkspace {
  Tensor buffer;
  int batch = 0;
  int64_t length = 0, checkpoint_every = 0;
  std::vector<float*> resid;        // n_layer + 1 of [T, D]: resid[l] enters layer l
  std::vector<MixerBuffers> layer;  // per layer (normed is recomputed, not kept)
  float* normed = nullptr;          // [T, D] scratch: a norm's output, recomputed when needed
  // Gradients, reused by every layer:
  float* d_resid = nullptr;         // [T, D] dL/d(residual stream)
  float* d_normed = nullptr;        // [T, D]
  float* d_xz = nullptr;            // [T, 2E]
  float* d_xc = nullptr;            // [T, E]
  float* d_dbc = nullptr;           // [T, R + 2N]
  float* d_dbc_raw = nullptr;       // [T, R + 2N] (Falcon)
  float* d_dt = nullptr;            // [T, E]
  float* d_y = nullptr;             // [T, E]
  float* conv_state = nullptr;      // [B, E, W - 1] and
  float* ssm_state = nullptr;       // [B, E, N]: set to the layer's initial states before each layer
  float* initial_conv = nullptr;    // n_layer of [B, E, W - 1]: the initial conv states, for the backward
  int32_t* ids = nullptr;           // [T]
  std::vector<float> cross_entropy_scratch;
};

// Falcon-Mamba's three weightless norms over x_proj's output: (first column, width) of dt_low, B, C.
inline std::array<std::pair<int64_t, int64_t>, 3> falcon_norm_spans(const MambaConfig& c) {
  return {{{0, c.dt_rank}, {c.dt_rank, c.d_state}, {c.dt_rank + c.d_state, c.d_state}}};
}

struct MambaModel::Impl {
  MambaConfig config;
  Parameters params;
  std::vector<float> A;  // [n_layer, E, N] = -exp(A_log), derived at load
  std::vector<LayerWeights> layers;
  ops::Weight embedding, lm_head;
  const float* norm_f = nullptr;
  Workspace ws;
  int64_t chunk_length = kDefaultChunkLength;
  TrainWorkspace train;
  int64_t scan_checkpoint_every = 64;

  Impl(const MambaConfig& c, WeightType weights) : config(c), params(c, weights) {}

  void bind();
  void reserve(int64_t rows);
  int64_t chunk_for(int batch) const;
  void check_tokens(const int32_t* tokens, int batch, int64_t length) const;
  void run_layers(int batch, int64_t len, InferenceState& state, const int32_t* positions = nullptr);
  ops::ConvArgs conv_args(const LayerWeights& w, const MixerBuffers& buf, int batch, int64_t len,
                          float* conv_state) const;
  ops::ScanArgs scan_args(const LayerWeights& w, const MixerBuffers& buf, int batch, int64_t len,
                          float* ssm_state) const;
  void mixer(const LayerWeights& w, int batch, int64_t len, const MixerBuffers& buf, float* conv_state,
             float* ssm_state);
  void write_outputs(int batch, int64_t len, int64_t t0, int64_t length, LogitsMode mode, float* logits,
                     float* hidden);
  void forward(const int32_t* tokens, int batch, int64_t length, InferenceState& state, LogitsMode mode,
               float* logits, float* hidden);

  // mamba_train.cpp
  Loss chunked_loss(const int32_t* tokens, const int32_t* targets, int batch, int64_t length,
                    const LossOptions& options);
  Loss loss_and_gradients(const int32_t* tokens, const int32_t* targets, int batch, int64_t length,
                          Parameters& grads, float grad_scale, const LossOptions& options);
  void plan_training(int batch, int64_t length);
  void backward_layer(int l, Parameters& grads, const LossOptions& options);
};

}  // namespace mambacpp
