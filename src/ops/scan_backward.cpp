// Dispatch and threading of ops::selective_scan_backward. Tasks are (sequence, block of 64
// channels) pairs, as in the forward. dB and dC are sums over channels and the parameter gradients
// sums over sequences, so each task writes partial sums of its own (the kernel's dbc and dparams)
// and they are added up afterwards in a fixed order: blocks in channel order, sequences in batch
// order. Which thread ran which task does not matter, so results repeat bit for bit, for any
// number of threads (training resume relies on it).
#include <omp.h>

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "ops/cpu/kernels.h"
#include "ops/ops.h"
#include "ops/reference.h"

namespace mambacpp::ops {
namespace {

// Below this many state updates the backward runs on the calling thread: waking the team costs more.
constexpr int64_t kMinParallelWork = 1 << 12;

// Channels per task: a multiple of every kernel's vector width. The partial dB and dC take 2N
// floats per token and task, as much as half a [tokens, channels] tensor for N = 16.
constexpr int64_t kChannelBlock = 64;

// The partial sums of every task, the calling thread's (grow, never shrink: no allocation per
// training step once the largest shape has been seen). Not cpu::thread_scratch: the kernels that
// run on this thread as OpenMP's thread 0 use that one. The team reaches them through a reference
// taken before the parallel region (a thread_local named inside it would be each thread's own).
struct Partials {
  std::vector<float> dbc, dparams;
};
Partials& partials() {
  thread_local Partials p;
  return p;
}

void check_args(const ScanBackwardArgs& g) {
  const ScanArgs& a = g.forward;
  MAMBACPP_CHECK(a.checkpoints && a.checkpoint_every > 0 && a.d_inner > 0 && a.d_state > 0);
  MAMBACPP_CHECK(a.x_ld >= a.d_inner && a.dt_ld >= a.d_inner && a.bc_ld >= a.d_state && (!a.z || a.z_ld >= a.d_inner));
  MAMBACPP_CHECK(g.dy && g.dy_ld >= a.d_inner && g.dx && g.dx_ld >= a.d_inner && g.ddt && g.ddt_ld >= a.d_inner);
  MAMBACPP_CHECK(g.dB && g.dC && g.dbc_ld >= a.d_state && g.dA_log);
  MAMBACPP_CHECK((!a.z || (g.dz && g.dz_ld >= a.d_inner)) && (!a.D || g.dD) && (!a.dt_bias || g.ddt_bias));
}

}  // namespace

void selective_scan_backward(const ScanBackwardArgs& g) {
  check_args(g);
  const ScanArgs& a = g.forward;
  const int64_t B = a.batch, L = a.length, E = a.d_inner, N = a.d_state;
  if (B == 0 || L == 0) return reference::pass_state_gradient(g);
  const int64_t blocks = (E + kChannelBlock - 1) / kChannelBlock, tasks = B * blocks;
  const int64_t dbc_floats = L * 2 * N, dparams_floats = E * N + 2 * E;  // per task, per sequence
  Partials& p = partials();
  p.dbc.assign(size_t(tasks * dbc_floats), 0.0f);  // keeps the capacity
  p.dparams.resize(std::max(p.dparams.size(), size_t(B * dparams_floats)));
  const bool parallel = B * L * E * N >= kMinParallelWork;
  const cpu::KernelSet& k = cpu::active_kernel_set();
#pragma omp parallel if (parallel)
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < tasks; ++i) {
      const int b = int(i / blocks);
      const int64_t e0 = (i % blocks) * kChannelBlock;
      k.scan_backward_channels(g, b, e0, std::min(E, e0 + kChannelBlock), p.dbc.data() + i * dbc_floats,
                               p.dparams.data() + b * dparams_floats);
    }
    // dB and dC of each token: the blocks' sums in channel order.
#pragma omp for schedule(static)
    for (int64_t row = 0; row < B * L; ++row) {
      const float* part = p.dbc.data() + ((row / L) * blocks * L + row % L) * 2 * N;
      float* dB = g.dB + row * g.dbc_ld;
      float* dC = g.dC + row * g.dbc_ld;
      std::copy(part, part + N, dB);
      std::copy(part + N, part + 2 * N, dC);
      for (int64_t block = 1; block < blocks; ++block) {
        const float* next = part + block * dbc_floats;
        for (int64_t n = 0; n < N; ++n) dB[n] += next[n], dC[n] += next[N + n];
      }
    }
    // The parameters: the sequences' sums in batch order, then added to the gradient.
    auto add_over_sequences = [&](int64_t offset, int64_t count, float* grad) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < count; ++i) {
        float sum = 0.0f;
        for (int64_t b = 0; b < B; ++b) sum += p.dparams[size_t(b * dparams_floats + offset + i)];
        grad[i] += sum;
      }
    };
    add_over_sequences(0, E * N, g.dA_log);
    if (a.D) add_over_sequences(E * N, E, g.dD);
    if (a.dt_bias) add_over_sequences(E * N + E, E, g.ddt_bias);
  }
}

}  // namespace mambacpp::ops
