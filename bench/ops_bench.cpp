// Micro-benchmarks of the ops at the mamba-130m shapes (d_model 768, d_inner 1536, d_state 16,
// dt_rank 48, vocab 50280). Before timing, every case checks its result against the fp32
// reference (ops/reference.h) and is skipped with an error if it disagrees. Figures are printed
// against this machine's rooflines, measured at start-up: memory read bandwidth (a streaming sum
// over 1 GiB on all threads) for the decode shapes, sgemm 2048^3 for the prefill shapes.
//
//   build/<dir>/ops_bench [--benchmark_filter=REGEX]      MAMBACPP_CPU=generic caps the kernels
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/cpu_features.h"
#include "core/error.h"
#include "core/half.h"
#include "core/rng.h"
#include "ops/ops.h"
#include "ops/reference.h"

namespace mambacpp {
namespace {

// Wall-clock time, or with one thread (OMP_NUM_THREADS=1) the thread's CPU time: on a machine
// shared with other work a single-threaded kernel's CPU time leaves out the time slices it
// waited for, while with several threads only wall time sees them all finish.
bool g_thread_cpu_time = false;

double now_seconds() {
  timespec t;
  clock_gettime(g_thread_cpu_time ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}
double seconds_since(double t0) { return now_seconds() - t0; }

struct Rooflines {
  double read_gbs = 0;      // GB/s
  double sgemm_gflops = 0;  // GFLOP/s
};
Rooflines g_roof;

// Best of 5 passes of a sum over 1 GiB of floats on all threads, each thread reading its share as
// 4 streams side by side: one sequential stream per core leaves bandwidth unused (too few misses
// in flight), and the kernels measured here read several weight rows at once.
double measure_read_bandwidth() {
  const size_t n = (size_t(1) << 30) / sizeof(float);
  std::vector<float> data(n);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) data[i] = float(i);  // no two pages alike (see WeightPool)
  double best = 0, sink = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const double t0 = now_seconds();
    double total = 0;
    size_t bytes = 0;
#pragma omp parallel reduction(+ : total, bytes)
    {
      constexpr int kStreams = 4, kWidth = 16;
      const size_t per_stream = n / size_t(omp_get_num_threads()) / kStreams / kWidth * kWidth;
      const float* base = data.data() + size_t(omp_get_thread_num()) * kStreams * per_stream;
      float part[kStreams][kWidth] = {};  // independent sums: vectorised without reassociating
      for (size_t i = 0; i < per_stream; i += kWidth)
        for (int s = 0; s < kStreams; ++s)
          for (int j = 0; j < kWidth; ++j) part[s][j] += base[s * per_stream + i + j];
      for (const auto& stream : part)
        for (float p : stream) total += p;
      bytes += kStreams * per_stream * sizeof(float);
    }
    best = std::max(best, double(bytes) / seconds_since(t0) / 1e9);
    sink += total;
  }
  benchmark::DoNotOptimize(sink);
  return best;
}

double measure_sgemm_peak() {
  const int n = 2048;
  std::vector<float> a(size_t(n) * n, 0.5f), b(size_t(n) * n, 0.25f), c(size_t(n) * n);
  double best = 0;
  for (int pass = 0; pass < 4; ++pass) {
    const double t0 = now_seconds();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    best = std::max(best, 2.0 * n * n * n / seconds_since(t0) / 1e9);
  }
  return best;
}

std::vector<float> random_floats(Rng& rng, size_t n, double scale) {
  std::vector<float> v(n);
  for (float& f : v) f = float(rng.normal() * scale);
  return v;
}

// Weight matrices of one shape and dtype: enough identical copies that cycling through them
// reads from memory, not from the 32 MiB L3 (as the model does, with different weights per layer).
struct WeightPool {
  std::vector<std::vector<uint8_t>> copies;
  ops::Weight base;
  size_t bytes = 0;
  size_t next = 0;
  WeightPool(Rng& rng, DType dtype, int64_t out, int64_t in) {
    bytes = size_t(out * in) * dtype_size(dtype);
    std::vector<uint8_t> first(bytes);
    const std::vector<float> w = random_floats(rng, size_t(out * in), 0.05);
    for (size_t i = 0; i < w.size(); ++i) {
      if (dtype == DType::F32) std::memcpy(first.data() + 4 * i, &w[i], 4);
      const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(w[i]) : f32_to_f16(w[i]);
      if (dtype != DType::F32) std::memcpy(first.data() + 2 * i, &h, 2);
    }
    const size_t count = std::max<size_t>(1, (size_t(256) << 20) / bytes);
    copies.assign(count, first);
    // One byte per page differs between copies, so no page-merging layer below us can map the
    // copies onto one piece of memory (which would then stay in cache).
    for (size_t c = 1; c < count; ++c)
      for (size_t page = 0; page < bytes; page += 4096) copies[c][page] ^= uint8_t(c);
    base = {nullptr, dtype, out, in};
  }
  ops::Weight take() {
    ops::Weight w = base;
    w.data = copies[next].data();
    next = (next + 1) % copies.size();
    return w;
  }
};

// y (first min(O, 64) columns) of ops::linear against the reference: the dot-product error
// bound 2 (K + 2) eps sum |x w| per element.
bool linear_matches_reference(const float* x, int64_t M, ops::Weight w, const float* y, int64_t y_ld) {
  const int64_t cols = std::min<int64_t>(w.out_features, 64), K = w.in_features;
  w.out_features = cols;
  std::vector<float> expected(size_t(M * cols));
  ops::reference::linear(x, K, M, w, nullptr, expected.data(), cols, false);
  std::vector<float> wide(size_t(cols * K));
  for (int64_t i = 0; i < cols * K; ++i) {
    const uint16_t h = static_cast<const uint16_t*>(w.data)[i];
    wide[i] = w.dtype == DType::F32 ? static_cast<const float*>(w.data)[i]
              : w.dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
  }
  for (int64_t m = 0; m < M; ++m)
    for (int64_t o = 0; o < cols; ++o) {
      double mag = 0;
      for (int64_t k = 0; k < K; ++k) mag += std::fabs(double(x[m * K + k]) * wide[o * K + k]);
      const double err = std::fabs(double(y[m * y_ld + o]) - expected[m * cols + o]);
      if (!(err <= 2.0 * double(K + 2) * 1.2e-7 * mag)) {
        std::fprintf(stderr, "linear mismatch at row %lld col %lld: expected %g actual %g\n", (long long)m,
                     (long long)o, expected[m * cols + o], y[m * y_ld + o]);
        return false;
      }
    }
  return true;
}

struct LinearShape {
  const char* name;
  int64_t out, in;
};
const LinearShape kInProj{"in_proj", 3072, 768}, kOutProj{"out_proj", 768, 1536}, kXProj{"x_proj", 80, 1536},
    kDtProj{"dt_proj", 1536, 48}, kLmHead{"lm_head", 50280, 768};

// The pool of the latest (shape, dtype): Google Benchmark calls a case several times while it
// settles the iteration count, and consecutive cases mostly share weights.
WeightPool& pool_for(LinearShape shape, DType dtype) {
  static std::unique_ptr<WeightPool> pool;
  if (!pool || pool->base.dtype != dtype || pool->base.out_features != shape.out || pool->base.in_features != shape.in) {
    pool.reset();
    Rng rng(42);
    pool = std::make_unique<WeightPool>(rng, dtype, shape.out, shape.in);
  }
  return *pool;
}

// One linear case: validated, then timed; counters per call.
void bench_linear(benchmark::State& state, LinearShape shape, DType dtype, int64_t M, ops::LinearPath path) {
  Rng rng(43);
  WeightPool& pool = pool_for(shape, dtype);
  const std::vector<float> x = random_floats(rng, size_t(M * shape.in), 1.0);
  std::vector<float> y(size_t(M * shape.out));
  ops::force_linear_path_for_testing(path);
  const ops::Weight first = pool.take();
  ops::linear(x.data(), shape.in, M, first, nullptr, y.data(), shape.out, false);
  if (!linear_matches_reference(x.data(), M, first, y.data(), shape.out)) {
    state.SkipWithError("result differs from the reference");
    ops::force_linear_path_for_testing(ops::LinearPath::Auto);
    return;
  }
  const double t0 = now_seconds();
  for (auto _ : state) {
    ops::linear(x.data(), shape.in, M, pool.take(), nullptr, y.data(), shape.out, false);
    benchmark::ClobberMemory();
  }
  const double per_call = seconds_since(t0) / double(state.iterations());
  ops::force_linear_path_for_testing(ops::LinearPath::Auto);
  const double gbs = double(pool.bytes) / per_call / 1e9, gflops = 2.0 * M * shape.out * shape.in / per_call / 1e9;
  state.counters["us"] = per_call * 1e6;
  state.counters["GB/s"] = gbs;
  state.counters["roof%"] = 100 * gbs / g_roof.read_gbs;
  state.counters["GFLOP/s"] = gflops;
  state.counters["sgemm%"] = 100 * gflops / g_roof.sgemm_gflops;
}

// Scan and conv inputs laid out as the model has them: x and z side by side in in_proj's output,
// B and C after the dt_rank columns of x_proj's output.
struct SsmInputs {
  int B;
  int64_t L, E = 1536, N = 16, R = 48, W = 4;
  std::vector<float> xz, dt, dbc, dt_bias, A, D, conv_w, conv_b, conv_state, ssm_state, y;
  SsmInputs(int B_, int64_t L_, int64_t E_ = 1536) : B(B_), L(L_), E(E_) {
    Rng rng(7);
    xz = random_floats(rng, size_t(B * L * 2 * E), 1.0);
    dt = random_floats(rng, size_t(B * L * E), 1.0);
    dbc = random_floats(rng, size_t(B * L * (R + 2 * N)), 1.0);
    dt_bias = random_floats(rng, size_t(E), 0.5);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t n = 0; n < N; ++n) A.push_back(-float(n + 1));  // mamba's A_log = log(1..N) init
    D = random_floats(rng, size_t(E), 1.0);
    conv_w = random_floats(rng, size_t(E * W), 0.5);
    conv_b = random_floats(rng, size_t(E), 0.5);
    conv_state = random_floats(rng, size_t(B * E * (W - 1)), 1.0);
    ssm_state = random_floats(rng, size_t(B * E * N), 1.0);
    y.assign(size_t(B * L * E), 0.0f);
  }
  ops::ScanArgs scan(float* state, float* out) {
    return {.batch = B, .length = L, .d_inner = E, .d_state = N, .x = xz.data(), .x_ld = 2 * E, .dt = dt.data(),
            .dt_ld = E, .dt_bias = dt_bias.data(), .A = A.data(), .Bm = dbc.data() + R, .Cm = dbc.data() + R + N,
            .bc_ld = R + 2 * N, .D = D.data(), .z = xz.data() + E, .z_ld = 2 * E, .state = state, .y = out,
            .y_ld = E};
  }
  ops::ConvArgs conv(float* state, float* out) {
    return {.batch = B, .length = L, .channels = E, .width = int(W), .x = xz.data(), .x_ld = 2 * E,
            .weight = conv_w.data(), .bias = conv_b.data(), .state = state, .out = out, .out_ld = E};
  }
};

// Largest |a - b| / (rel * |b| + abs) must stay below 1.
bool close(const std::vector<float>& a, const std::vector<float>& b, double rel, double abs) {
  for (size_t i = 0; i < a.size(); ++i)
    if (!(std::fabs(double(a[i]) - b[i]) <= rel * std::fabs(double(b[i])) + abs)) {
      std::fprintf(stderr, "mismatch at %zu: expected %g actual %g\n", i, b[i], a[i]);
      return false;
    }
  return true;
}

void report_per_element(benchmark::State& state, double t0, double elements) {
  const double per_call = seconds_since(t0) / double(state.iterations());
  state.counters["us"] = per_call * 1e6;
  state.counters["ns/elem"] = per_call * 1e9 / elements;
}

void bench_scan(benchmark::State& state, int B, int64_t L) {
  SsmInputs in(B, L);
  std::vector<float> state_fast = in.ssm_state, state_ref = in.ssm_state, y_ref = in.y;
  ops::selective_scan(in.scan(state_fast.data(), in.y.data()));
  ops::reference::selective_scan(in.scan(state_ref.data(), y_ref.data()));
  // tolerance: relative 1e-4 of the value plus 1e-4 absolute, far above the argued error of a
  // correct kernel (tests/ops_test.cpp) and far below that of a wrong one
  if (!close(in.y, y_ref, 1e-4, 1e-4) || !close(state_fast, state_ref, 1e-4, 1e-4))
    return state.SkipWithError("result differs from the reference");
  std::vector<float> s = in.ssm_state;
  const double t0 = now_seconds();
  for (auto _ : state) {
    ops::selective_scan(in.scan(s.data(), in.y.data()));
    benchmark::ClobberMemory();
  }
  report_per_element(state, t0, double(B * L * in.E * in.N));
}

// The scan's training pair at a training shape: the forward saving the state every 64 tokens
// (ops.h, ScanArgs::checkpoints), or the backward recomputing from those states. Validated first
// on the first sequence against the reference (the reference backward takes seconds at full size).
struct ScanTraining {
  static constexpr int64_t kEvery = 64;
  SsmInputs in;
  std::vector<float> state, checkpoints, dy, dx, ddt, dz, dbc, dD, ddt_bias, dA_log;
  ScanTraining(int B, int64_t L, int64_t E) : in(B, L, E) {
    const int64_t rows = B * L, N = in.N;
    state = in.ssm_state;
    checkpoints.resize(size_t(B * ((L + kEvery - 1) / kEvery) * E * N));
    Rng rng(8);
    dy = random_floats(rng, size_t(rows * E), 1.0);
    dx.resize(size_t(rows * E)), ddt.resize(size_t(rows * E)), dz.resize(size_t(rows * E));
    dbc.resize(size_t(rows * 2 * N));
    dD.resize(size_t(E)), ddt_bias.resize(size_t(E)), dA_log.resize(size_t(E * N));
  }
  ops::ScanArgs forward(bool save_states) {
    ops::ScanArgs a = in.scan(state.data(), in.y.data());
    if (save_states) a.checkpoints = checkpoints.data(), a.checkpoint_every = kEvery;
    return a;
  }
  ops::ScanBackwardArgs backward() {
    const int64_t E = in.E, N = in.N;
    return {.forward = forward(true), .dy = dy.data(), .dy_ld = E, .dx = dx.data(), .dx_ld = E, .ddt = ddt.data(),
            .ddt_ld = E, .dB = dbc.data(), .dC = dbc.data() + N, .dbc_ld = 2 * N, .dz = dz.data(), .dz_ld = E,
            .dD = dD.data(), .ddt_bias = ddt_bias.data(), .dA_log = dA_log.data()};
  }
};

bool scan_backward_matches_reference(int64_t L, int64_t E) {
  ScanTraining fast(1, L, E), ref(1, L, E);
  ops::selective_scan(fast.forward(true));
  ops::selective_scan_backward(fast.backward());
  ops::reference::selective_scan(ref.forward(true));
  ops::reference::selective_scan_backward(ref.backward());
  // relative 1e-3 plus 1e-3 absolute: far above the argued error of a correct kernel
  // (tests/ops_scan_backward_test.cpp), far below that of a wrong one
  for (auto [a, b] : {std::pair{&fast.dx, &ref.dx}, {&fast.ddt, &ref.ddt}, {&fast.dz, &ref.dz}, {&fast.dbc, &ref.dbc},
                      {&fast.dD, &ref.dD}, {&fast.ddt_bias, &ref.ddt_bias}, {&fast.dA_log, &ref.dA_log}})
    if (!close(*a, *b, 1e-3, 1e-3)) return false;
  return true;
}

void bench_scan_training(benchmark::State& state, bool backward, bool save_states, int B, int64_t L, int64_t E) {
  if (!scan_backward_matches_reference(L, E)) return state.SkipWithError("result differs from the reference");
  ScanTraining run(B, L, E);
  ops::selective_scan(run.forward(true));
  const double t0 = now_seconds();
  for (auto _ : state) {
    if (backward) ops::selective_scan_backward(run.backward());
    else ops::selective_scan(run.forward(save_states));
    benchmark::ClobberMemory();
  }
  report_per_element(state, t0, double(B * L * E * run.in.N));
}

void bench_conv(benchmark::State& state, int B, int64_t L) {
  SsmInputs in(B, L);
  std::vector<float> s_fast = in.conv_state, s_ref = in.conv_state, y_ref = in.y;
  ops::causal_conv1d_silu(in.conv(s_fast.data(), in.y.data()));
  ops::reference::causal_conv1d_silu(in.conv(s_ref.data(), y_ref.data()));
  if (!close(in.y, y_ref, 1e-5, 1e-6) || s_fast != s_ref) return state.SkipWithError("result differs from the reference");
  const double t0 = now_seconds();
  for (auto _ : state) {
    ops::causal_conv1d_silu(in.conv(s_fast.data(), in.y.data()));
    benchmark::ClobberMemory();
  }
  report_per_element(state, t0, double(B * L * in.E));
}

void bench_rmsnorm(benchmark::State& state, int64_t M) {
  const int64_t D = 768;
  Rng rng(3);
  const std::vector<float> x = random_floats(rng, size_t(M * D), 1.0), w = random_floats(rng, size_t(D), 1.0);
  std::vector<float> y(x.size()), y_ref(x.size());
  ops::rmsnorm(x.data(), D, M, D, w.data(), 1e-5f, y.data(), D);
  ops::reference::rmsnorm(x.data(), D, M, D, w.data(), 1e-5f, y_ref.data(), D);
  if (!close(y, y_ref, 1e-5, 0)) return state.SkipWithError("result differs from the reference");
  const double t0 = now_seconds();
  for (auto _ : state) {
    ops::rmsnorm(x.data(), D, M, D, w.data(), 1e-5f, y.data(), D);
    benchmark::ClobberMemory();
  }
  report_per_element(state, t0, double(M * D));
}

// One Mamba block at prefill (DESIGN.md's equations, fp32 weights, the 130m shape) as the model
// runs it, timed op by op: the share of the sgemm peak the whole block reaches is the prefill
// goal's measure (>= 60%), and the split shows what the non-GEMM ops cost.
struct Block {
  static constexpr int64_t D = 768, E = 1536, N = 16, R = 48, W = 4;
  int64_t M;
  std::vector<float> norm_w, in_proj, conv_w, conv_b, x_proj, dt_proj, dt_bias, A, Dskip, out_proj;
  std::vector<float> x, h, xz, xc, dbc, dt, y, conv_state, ssm_state;
  explicit Block(int64_t M_) : M(M_) {
    Rng rng(11);
    norm_w = random_floats(rng, D, 1.0);
    in_proj = random_floats(rng, size_t(2 * E * D), 0.036);
    conv_w = random_floats(rng, size_t(E * W), 0.5);
    conv_b = random_floats(rng, size_t(E), 0.5);
    x_proj = random_floats(rng, size_t((R + 2 * N) * E), 0.025);
    dt_proj = random_floats(rng, size_t(E * R), 0.14);
    dt_bias = random_floats(rng, size_t(E), 0.5);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t n = 0; n < N; ++n) A.push_back(-float(n + 1));
    Dskip = random_floats(rng, size_t(E), 1.0);
    out_proj = random_floats(rng, size_t(D * E), 0.025);
    x = random_floats(rng, size_t(M * D), 1.0);
    h.resize(size_t(M * D)), xz.resize(size_t(M * 2 * E)), xc.resize(size_t(M * E)), dbc.resize(size_t(M * (R + 2 * N)));
    dt.resize(size_t(M * E)), y.resize(size_t(M * E));
    conv_state.assign(size_t(E * (W - 1)), 0.0f), ssm_state.assign(size_t(E * N), 0.0f);
  }
  static double gemm_flops(int64_t M) { return 2.0 * M * (2 * E * D + (R + 2 * N) * E + E * R + D * E); }

  // The ops of ops.h, or of reference.h; times[0] GEMMs, [1] conv, [2] scan, [3] rmsnorm (seconds).
  template <bool kReference>
  void run(double times[4]) {
    auto timed = [&](int slot, auto&& fn) {
      const double t0 = now_seconds();
      fn();
      times[slot] += seconds_since(t0);
    };
    auto linear = [&](const float* in, int64_t in_ld, const std::vector<float>& w, int64_t out, int64_t k,
                      const float* bias, float* o, int64_t o_ld, bool acc) {
      const ops::Weight wt{w.data(), DType::F32, out, k};
      timed(0, [&] {
        if (kReference) ops::reference::linear(in, in_ld, M, wt, bias, o, o_ld, acc);
        else ops::linear(in, in_ld, M, wt, bias, o, o_ld, acc);
      });
    };
    timed(3, [&] {
      if (kReference) ops::reference::rmsnorm(x.data(), D, M, D, norm_w.data(), 1e-5f, h.data(), D);
      else ops::rmsnorm(x.data(), D, M, D, norm_w.data(), 1e-5f, h.data(), D);
    });
    linear(h.data(), D, in_proj, 2 * E, D, nullptr, xz.data(), 2 * E, false);
    const ops::ConvArgs conv{.batch = 1, .length = M, .channels = E, .width = int(W), .x = xz.data(), .x_ld = 2 * E,
                             .weight = conv_w.data(), .bias = conv_b.data(), .state = conv_state.data(),
                             .out = xc.data(), .out_ld = E};
    timed(1, [&] { kReference ? ops::reference::causal_conv1d_silu(conv) : ops::causal_conv1d_silu(conv); });
    linear(xc.data(), E, x_proj, R + 2 * N, E, nullptr, dbc.data(), R + 2 * N, false);
    linear(dbc.data(), R + 2 * N, dt_proj, E, R, nullptr, dt.data(), E, false);
    const ops::ScanArgs scan{.batch = 1, .length = M, .d_inner = E, .d_state = N, .x = xc.data(), .x_ld = E,
                             .dt = dt.data(), .dt_ld = E, .dt_bias = dt_bias.data(), .A = A.data(),
                             .Bm = dbc.data() + R, .Cm = dbc.data() + R + N, .bc_ld = R + 2 * N, .D = Dskip.data(),
                             .z = xz.data() + E, .z_ld = 2 * E, .state = ssm_state.data(), .y = y.data(), .y_ld = E};
    timed(2, [&] { kReference ? ops::reference::selective_scan(scan) : ops::selective_scan(scan); });
    linear(y.data(), E, out_proj, D, E, nullptr, x.data(), D, true);
  }
};

void bench_block_prefill(benchmark::State& state, int64_t M) {
  Block fast(M), ref(M);
  double unused[4] = {};
  fast.run<false>(unused);
  ref.run<true>(unused);
  if (!close(fast.x, ref.x, 1e-3, 1e-3)) return state.SkipWithError("block output differs from the reference");
  double times[4] = {};
  const double t0 = now_seconds();
  for (auto _ : state) {
    fast.conv_state.assign(fast.conv_state.size(), 0.0f), fast.ssm_state.assign(fast.ssm_state.size(), 0.0f);
    fast.run<false>(times);
  }
  const double iters = double(state.iterations()), per_call = seconds_since(t0) / iters;
  state.counters["us"] = per_call * 1e6;
  state.counters["GFLOP/s"] = Block::gemm_flops(M) / per_call / 1e9;
  state.counters["sgemm%"] = 100 * Block::gemm_flops(M) / per_call / 1e9 / g_roof.sgemm_gflops;
  state.counters["gemm%time"] = 100 * times[0] / iters / per_call;
  state.counters["conv_us"] = times[1] / iters * 1e6;
  state.counters["scan_us"] = times[2] / iters * 1e6;
  state.counters["norm_us"] = times[3] / iters * 1e6;
}

void register_all() {
  auto add = [](const std::string& name, std::function<void(benchmark::State&)> fn) {
    benchmark::RegisterBenchmark(name.c_str(), [fn](benchmark::State& s) { fn(s); })
        ->UseRealTime()
        ->MinTime(0.3)
        ->Unit(benchmark::kMicrosecond);
  };
  using P = ops::LinearPath;
  // Decode: one read of the weights per call, for M = 1, 8, 32 sequences.
  for (DType dtype : {DType::F32, DType::BF16})
    for (LinearShape shape : {kInProj, kOutProj, kLmHead})
      for (int64_t M : {1, 8, 32})
        add(cat("decode/", shape.name, "/", dtype_name(dtype), "/M:", M),
            [=](benchmark::State& s) { bench_linear(s, shape, dtype, M, P::Auto); });
  // Where sgemm overtakes the streaming kernel.
  for (LinearShape shape : {kInProj, kOutProj})
    for (DType dtype : {DType::F32, DType::BF16})
      for (int64_t M : {8, 16, 32, 48, 64, 128})
        for (P path : {P::Streaming, P::Gemm})
          add(cat("crossover/", shape.name, "/", dtype_name(dtype), "/", path == P::Gemm ? "sgemm" : "streaming",
                  "/M:", M),
              [=](benchmark::State& s) { bench_linear(s, shape, dtype, M, path); });
  // Prefill: 512 rows.
  for (DType dtype : {DType::F32, DType::BF16})
    for (LinearShape shape : {kInProj, kOutProj, kXProj, kDtProj})
      add(cat("prefill/", shape.name, "/", dtype_name(dtype), "/M:512"),
          [=](benchmark::State& s) { bench_linear(s, shape, dtype, 512, P::Auto); });
  add("scan/B:1/L:512", [](benchmark::State& s) { bench_scan(s, 1, 512); });
  add("scan/B:1/L:1", [](benchmark::State& s) { bench_scan(s, 1, 1); });
  add("scan/B:32/L:1", [](benchmark::State& s) { bench_scan(s, 32, 1); });
  // Training shape: d_model 512 (E 1024), batch 8 x length 512.
  add("scan_train/forward/E:1024/B:8/L:512", [](benchmark::State& s) { bench_scan_training(s, false, false, 8, 512, 1024); });
  add("scan_train/forward_saving_states/E:1024/B:8/L:512",
      [](benchmark::State& s) { bench_scan_training(s, false, true, 8, 512, 1024); });
  add("scan_train/backward/E:1024/B:8/L:512", [](benchmark::State& s) { bench_scan_training(s, true, true, 8, 512, 1024); });
  add("conv/B:1/L:512", [](benchmark::State& s) { bench_conv(s, 1, 512); });
  add("conv/B:1/L:1", [](benchmark::State& s) { bench_conv(s, 1, 1); });
  add("rmsnorm/M:512", [](benchmark::State& s) { bench_rmsnorm(s, 512); });
  add("block_prefill/F32/M:512", [](benchmark::State& s) { bench_block_prefill(s, 512); });
}

}  // namespace
}  // namespace mambacpp

int main(int argc, char** argv) {
  using namespace mambacpp;
  benchmark::Initialize(&argc, argv);
  g_thread_cpu_time = omp_get_max_threads() == 1;
  g_roof.read_gbs = measure_read_bandwidth();
  g_roof.sgemm_gflops = measure_sgemm_peak();
  std::printf("ops_bench: %s, %d threads, kernel level %s\n", cpu_features().model_name.c_str(), omp_get_max_threads(),
              std::string(ops::kernel_level()).c_str());
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {  // other work on the machine skews every figure
    char load[64] = {};
    if (std::fgets(load, sizeof load, f)) std::printf("load average at start: %s", load);
    std::fclose(f);
  }
  std::printf("rooflines: memory read %.1f GB/s (sum over 1 GiB), sgemm 2048^3 %.1f GFLOP/s\n", g_roof.read_gbs,
              g_roof.sgemm_gflops);
  std::printf("times: %s\n", g_thread_cpu_time ? "CPU time of the one thread" : "wall clock");
  std::printf("roof%% = weight bytes per call / time / read bandwidth; sgemm%% = GEMM FLOPs / time / sgemm peak\n");
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
