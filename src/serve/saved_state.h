// A finished completion's recurrent state, kept so a later request can continue the sequence
// (POST /v1/state/save and the start_state of a completion request).
//
// The state holds every token of the sequence but the last: a completion's last sampled token
// never went through the model (generation stops right after sampling it), so it is kept as a
// pending token that a continuation feeds first, ahead of its own prompt. Continuing with prompt
// B thus runs the same tokens as a cold request for (all tokens + B). Continuations do not use
// the prefix-state cache.
//
// On disk (state_dir/st-<32 hex>, written atomically): a magic, the model's shape and a
// fingerprint of its fp32 vector parameters (norms, conv, A_log, D, biases), so a state saved
// with another model, even one of the same shape, is refused; then the tokens, then each
// layer's conv and SSM state. Ids are random and checked against ^st-[0-9a-f]{32}$ before any
// path is formed, so clients can neither name nor guess files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "model/mamba_model.h"

namespace mambacpp::serve {

struct SavedState {
  std::vector<int32_t> tokens;  // every token of the sequence (>= 1); the last one is pending
  InferenceState state;         // batch 1: after tokens[0, size - 1)
};

// What a saved state must match to be loaded: the shape and a fingerprint of the weights.
struct ModelShape {  // in the state file's header in this order
  int64_t vocab_size = 0, d_model = 0, n_layer = 0, d_inner = 0, d_state = 0, d_conv = 0, dt_rank = 0;
};
struct ModelSignature {
  std::string model_type;
  ModelShape shape;
  uint64_t weights_fingerprint = 0;
};
ModelSignature model_signature(const MambaModel& model);

bool is_state_id(std::string_view id);  // ^st-[0-9a-f]{32}$
std::string new_state_id();             // 128 random bits
std::string random_hex(int bytes);      // 2 x bytes lowercase hex digits from std::random_device

// Writes `saved` to `file` atomically.
void write_saved_state(const std::filesystem::path& file, const SavedState& saved, const ModelSignature& signature);
// Reads and validates a state written for a model with `signature`; BadInput naming `what`
// ("start_state st-...") and the field that does not match, for a missing, damaged or foreign file.
SavedState read_saved_state(const std::filesystem::path& file, const MambaModel& model,
                            const ModelSignature& signature, std::string_view what);

}  // namespace mambacpp::serve
