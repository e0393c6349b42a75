// The Mamba-1 language model (DESIGN.md's equations): embedding, n_layer residual blocks of
// RMSNorm -> mixer (in_proj, causal depthwise conv, SiLU, selective scan, gate, out_proj), final
// RMSNorm, lm_head. One flat parameter buffer described by one table (parameters.h) drives
// loading, saving and (later) gradients and AdamW. Falcon-Mamba adds weightless RMSNorms on
// dt, B and C. Compute is fp32; matrices may be held in BF16/F16 and widened in the kernels.
//
// Not thread-safe: a model owns one activation workspace of batch x chunk rows, grown only when a
// call needs more rows and otherwise reused, so forward() and step() allocate nothing after the
// first call of a given size (nor after any larger one).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "model/parameters.h"  // WeightType

namespace mambacpp {

struct LoadOptions {
  // nullopt: F32, or the checkpoint's own dtype when every matrix in it is BF16 / F16.
  std::optional<WeightType> weights;
};

// The recurrent state of `batch` sequences for every layer: conv state [B, E, W-1] (the last
// W-1 inputs of the conv, oldest first) and SSM state [B, E, N], fp32.
class InferenceState {
 public:
  InferenceState() = default;
  InferenceState(const MambaConfig& c, int batch);
  int batch() const { return batch_; }
  void reset();                 // all sequences back to the empty context
  void reset_slot(int b);
  // Copies sequence `from_slot` of `from` (same model shape) into slot `to_slot` of this state.
  void copy_slot(const InferenceState& from, int from_slot, int to_slot);
  // Changes the number of sequences, keeping slots [0, min(old, new)) and zeroing new ones. The
  // memory of the largest batch seen is kept, so a server's batch shrinks and grows back without
  // allocating.
  void set_batch(int batch);
  size_t bytes() const;  // of the current batch
  float* conv(int layer);  // [B, E, W-1]
  float* ssm(int layer);   // [B, E, N]
  const float* conv(int layer) const;
  const float* ssm(int layer) const;

 private:
  int batch_ = 0;
  int64_t conv_per_layer_ = 0, ssm_per_layer_ = 0;  // elements per layer (all B sequences)
  std::vector<float> conv_, ssm_;
  int64_t n_layer_ = 0;
};

enum class LogitsMode { None, Last, All };

// What a training call may add to the plain loss: packed documents, states carried across
// windows, and a hook for overlapping communication with the backward.
struct LossOptions {
  // Position of each token inside its document, [batch, length]; null: each row is one
  // document that continues from the row's initial state. A token at position 0 starts a new
  // document: the conv does not look behind it and the scan restarts from the zero state, so
  // documents packed into one row never see each other (forward and backward). A row whose
  // first position is > 0 continues from its initial state.
  const int32_t* positions = nullptr;
  // The states each row starts from (batch() == batch); null: the empty context.
  const InferenceState* initial_state = nullptr;
  // When not null (batch() == batch): receives the states after each row's last token.
  InferenceState* final_state = nullptr;
  // With grads: dL/d(final states) of a later window, added in the backward (null: zero). Both
  // state gradients are in the units of the parameter gradients, i.e. already times grad_scale.
  const InferenceState* d_final_state = nullptr;
  // With grads: when not null, receives grad_scale x dL/d(initial states) (batch() == batch).
  // initial_state may be final_state and d_final_state may be d_initial_state (copied as needed).
  InferenceState* d_initial_state = nullptr;
  // With grads: called with layer l once layer l's parameter gradients are complete (l runs
  // from n_layer - 1 down to 0), then with kRestOfModel once the embedding, final norm and
  // lm_head gradients are complete. Lets a data-parallel trainer start reducing early.
  std::function<void(int layer)> on_gradients_ready;
};
// on_gradients_ready's argument once the gradients outside the layers are complete.
inline constexpr int kRestOfModel = -1;

class MambaModel {
 public:
  // Reads the checkpoint folder (any format io reads) and validates every tensor against the
  // parameter table: missing, extra or mis-shaped tensors are a BadInput naming file and tensor.
  // A mapped file's pages are handed back as they are copied: loading peaks near the model's size.
  static MambaModel load(const std::filesystem::path& dir, const LoadOptions& options = {});
  // `source` names the origin in error messages. Accepts HF names and mamba_ssm names.
  static MambaModel from_tensors(const MambaConfig& config, const TensorMap& tensors, const std::string& source,
                                 const LoadOptions& options = {});
  // Random weights of the given shape (training from scratch, benchmarks, tests), initialised as
  // transformers / mamba_ssm do: N(0, 0.02) matrices (out_proj / sqrt(n_layer)), dt bias = inverse
  // softplus of a log-uniform dt in [time_step_min, time_step_max] floored, A_log = log(1..N), D = 1.
  static MambaModel random(const MambaConfig& config, uint64_t seed, WeightType weights = WeightType::F32);

  MambaModel(MambaModel&&) noexcept;
  MambaModel& operator=(MambaModel&&) noexcept;
  ~MambaModel();

  const MambaConfig& config() const;
  int64_t parameter_count() const;
  size_t weight_bytes() const;  // bytes of parameters held in memory (with alignment and A = -exp(A_log))
  WeightType weight_type() const;
  // Every stored tensor under its HF name (lm_head.weight only when untied), as `dtype`.
  std::vector<std::pair<std::string, Tensor>> hf_tensors(DType dtype) const;

  InferenceState new_state(int batch) const { return InferenceState(config(), batch); }

  // Runs tokens [batch, length] (row-major, every id < vocab_size) starting from `state` and
  // leaves the final states in it. Long inputs are processed in chunks carrying the state, so
  // memory does not grow with length. logits: All -> [batch, length, V]; Last -> [batch, V];
  // None -> not computed (may be null). hidden, if not null: final-norm output [batch, length, D].
  // An id outside the vocabulary is a BadInput naming it and its position (state untouched).
  void forward(const int32_t* tokens, int batch, int64_t length, InferenceState& state, LogitsMode mode,
               float* logits, float* hidden = nullptr);
  // One token for each of state.batch() sequences: tokens [B] -> logits [B, V]. Cost does not
  // depend on how long the context is; allocates nothing after the first call of a batch size.
  void step(const int32_t* tokens, InferenceState& state, float* logits);

  // Training. Cross-entropy of predicting targets[b, t] from tokens[b, 0..t], both [batch, length]
  // (a target < 0 is ignored; every other one must be < vocab_size). Returns the sum over targets
  // and their count. With `grads` (a Parameters of this config in F32), adds
  // grad_scale x d(sum)/d(parameter) to it: pass 1/count for the mean, smaller for accumulation.
  // A tied head's gradient goes into the embedding's. Without grads it runs the chunked forward
  // (memory independent of length); with grads it needs F32 weights and keeps every layer's
  // activations (about 12 x d_model floats per token per layer) plus the scan's states at every
  // scan_checkpoint_every-th token: memory grows as batch x length x d_inner, never x d_state.
  struct Loss {
    double sum = 0;
    int64_t count = 0;
    double mean() const { return count ? sum / double(count) : 0.0; }
  };
  Loss loss(const int32_t* tokens, const int32_t* targets, int batch, int64_t length, Parameters* grads = nullptr,
            float grad_scale = 1.0f, const LossOptions& options = {});
  // Tokens between saved scan states in the training forward (default 64). Gradients do not depend
  // on it beyond rounding; tests set 1, odd values and values above the length.
  void set_scan_checkpoint_every(int64_t tokens);
  // Bytes the training activations for (batch, length) take (planned up front, allocated once per
  // shape by loss() with grads, reused after).
  size_t training_bytes(int batch, int64_t length) const;

  // The parameter values, for the optimizer. After changing them call parameters_changed(), which
  // re-derives what the model caches from them (A = -exp(A_log)).
  Parameters& parameters();
  const Parameters& parameters() const;
  void parameters_changed();

  // Tokens per sequence processed at once (default kDefaultChunkLength); with many sequences the
  // chunk shrinks so that batch x chunk stays within kMaxChunkRows. Results do not depend on it
  // beyond rounding; tests set it small to cross chunk boundaries.
  static constexpr int64_t kDefaultChunkLength = 512;
  static constexpr int64_t kMaxChunkRows = 4096;
  void set_chunk_length(int64_t tokens);
  int64_t chunk_length() const;
  // Bytes of the activation workspace now allocated (grows to batch x chunk rows, never with L).
  size_t workspace_bytes() const;

 private:
  struct Impl;
  explicit MambaModel(std::unique_ptr<Impl> impl);
  // from_tensors; with release_sources, the tensors' pages are handed back once copied (load()).
  static MambaModel from_tensors_impl(const MambaConfig& config, const TensorMap& tensors, const std::string& source,
                                      const LoadOptions& options, bool release_sources);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mambacpp
