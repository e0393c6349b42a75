// Initial states and packed documents at the op level (ops.h: ConvArgs / ScanArgs::positions,
// ConvBackwardArgs / ScanBackwardArgs::dstate_final and dstate):
//  - the reference forward and backward against a double-precision forward written here (the
//    loss sum(dout * out) + sum(dfinal * final state)) and its central differences, for dL/d(initial
//    state) and every other gradient, with restarts inside rows, rows continuing at a position > 0,
//    rows shorter than the conv's state;
//  - every kernel level against the reference (forward outputs, final states, every gradient);
//  - a packed row equals its documents run as separate rows, forward and backward.
//
// Tolerances. Finite differences (step 1e-5 in double, O(1) inputs): truncation ~1e-10 and
// rounding ~1e-11, far below the fp32 reference's own error, a few 1e-7 of each gradient's scale on
// these short sums; the bound 1e-4 (|fd| + rms) leaves a wide margin over both, while a missing or
// wrong term is off by O(1). Kernels against the reference: the same sums in other orders, a vector
// exp within 2 ulp of libm's: 8 (L + N + E) eps relative to |value| + rms, as in ops_scan_backward_test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "ops/ops.h"
#include "ops/reference.h"
#include "ops_test_support.h"

namespace mambacpp::ops {
namespace {

using namespace testing;

constexpr double kEps = std::numeric_limits<float>::epsilon();

std::vector<double> random_values(Rng& rng, size_t n, double lo, double hi) {
  std::vector<double> v(n);
  for (double& d : v) d = double(float(lo + (hi - lo) * rng.uniform()));  // each a float: both sides see the same
  return v;
}
std::vector<float> to_float(const std::vector<double>& v) { return {v.begin(), v.end()}; }
std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// The largest error / bound a test saw, printed at its end to show the margin.
struct Margin {
  std::string name;
  double worst = 0;
  void add(double r) { worst = std::max(worst, r); }
  ~Margin() { std::printf("[ margin   ] %s: worst error / bound = %.3g\n", name.c_str(), worst); }
};

// |actual - expected| <= rel (|expected| + rms(expected)) elementwise; a failure names the worst
// element. Returns the worst error / bound.
double expect_close(const std::string& what, const std::vector<float>& actual, const std::vector<double>& expected,
                    double rel) {
  EXPECT_EQ(actual.size(), expected.size()) << what;
  double sum_sq = 0;
  for (double v : expected) sum_sq += v * v;
  const double rms = std::sqrt(sum_sq / double(std::max<size_t>(expected.size(), 1)));
  size_t worst = 0, failures = 0;
  double worst_ratio = 0;
  for (size_t i = 0; i < actual.size() && i < expected.size(); ++i) {
    const double bound = rel * (std::fabs(expected[i]) + rms) + 1e-30, err = std::fabs(double(actual[i]) - expected[i]);
    const double ratio = err == err ? err / bound : INFINITY;
    failures += !(err <= bound);
    if (!(ratio <= worst_ratio)) worst_ratio = ratio, worst = i;
  }
  if (actual.empty()) return 0;
  EXPECT_EQ(failures, 0u) << what << ": " << failures << " of " << actual.size() << " out of bounds; worst at index "
                          << worst << ": expected " << expected[worst] << ", actual " << actual[worst];
  return worst_ratio;
}
double expect_close(const std::string& what, const std::vector<float>& actual, const std::vector<float>& expected,
                    double rel) {
  return expect_close(what, actual, to_double(expected), rel);
}

// Central differences of f with respect to each element of v (changed and restored in place).
std::vector<double> numeric_gradient(std::vector<double>& v, const std::function<double()>& f) {
  std::vector<double> g(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const double saved = v[i], h = 1e-5;
    v[i] = saved + h;
    const double up = f();
    v[i] = saved - h;
    const double down = f();
    v[i] = saved;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

// Positions of rows made of documents of the given lengths; the first document of a row starts at
// `first` (> 0: it continues from the initial state).
std::vector<int32_t> packed_positions(const std::vector<std::vector<int64_t>>& rows, int32_t first = 0) {
  std::vector<int32_t> p;
  for (const auto& docs : rows)
    for (size_t d = 0; d < docs.size(); ++d)
      for (int64_t t = 0; t < docs[d]; ++t) p.push_back(int32_t(t) + (d == 0 ? first : 0));
  return p;
}

double silu(double u) { return u / (1 + std::exp(-u)); }
double softplus(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }

// ---------------------------------------------------------------------------------------------
// Conv

struct ConvCase {
  std::string name;
  int B;
  int64_t L, E;
  int W;
  std::vector<int32_t> positions;  // empty: none
};

// Inputs in double (each a float), dense: x [B*L, E], weight [E, W], bias [E], state and dfinal
// [B, E, W-1], dout [B*L, E].
struct ConvInputs {
  ConvCase c;
  std::vector<double> x, weight, bias, state, dout, dfinal;
  ConvInputs(Rng& rng, const ConvCase& c_) : c(c_) {
    const size_t rows = size_t(c.B * c.L), S = size_t(c.B * c.E * (c.W - 1));
    x = random_values(rng, rows * c.E, -2, 2), weight = random_values(rng, size_t(c.E * c.W), -0.8, 0.8);
    bias = random_values(rng, size_t(c.E), -0.5, 0.5), state = random_values(rng, S, -2, 2);
    dout = random_values(rng, rows * c.E, -1, 1), dfinal = random_values(rng, S, -1, 1);
  }
  const int32_t* positions() const { return c.positions.empty() ? nullptr : c.positions.data(); }
  int first_tap(int b, int64_t t) const {
    return c.positions.empty() ? 0 : std::max(0, c.W - 1 - c.positions[size_t(b * c.L + t)]);
  }
  // Input at position p of row b, for channel e: p < 0 reaches into the state.
  double input(int b, int64_t e, int64_t p) const {
    return p >= 0 ? x[size_t((b * c.L + p) * c.E + e)] : state[size_t((b * c.E + e) * (c.W - 1) + (c.W - 1 + p))];
  }
  // Out [B*L, E] and the final state [B, E, W-1] by ops.h's comment, in double.
  void forward(std::vector<double>& out, std::vector<double>& final_state) const {
    const int S = c.W - 1;
    out.assign(size_t(c.B * c.L * c.E), 0.0);
    final_state.assign(state.size(), 0.0);
    for (int b = 0; b < c.B; ++b)
      for (int64_t e = 0; e < c.E; ++e) {
        for (int64_t t = 0; t < c.L; ++t) {
          double u = bias[size_t(e)];
          for (int k = first_tap(b, t); k < c.W; ++k) u += weight[size_t(e * c.W + k)] * input(b, e, t - S + k);
          out[size_t((b * c.L + t) * c.E + e)] = silu(u);
        }
        // Entry k is the input at p = L - S + k, kept while it belongs to the last document: the
        // last token reaches back L-1 - p <= its position.
        for (int k = 0; k < S; ++k) {
          const int64_t p = c.L - S + k;
          const bool kept = c.positions.empty() || c.L == 0 || c.L - 1 - p <= c.positions[size_t((b + 1) * c.L - 1)];
          final_state[size_t((b * c.E + e) * S + k)] = kept ? input(b, e, p) : 0.0;
        }
      }
  }
  double loss() const {
    std::vector<double> out, final_state;
    forward(out, final_state);
    double sum = 0;
    for (size_t i = 0; i < out.size(); ++i) sum += dout[i] * out[i];
    for (size_t i = 0; i < final_state.size(); ++i) sum += dfinal[i] * final_state[i];
    return sum;
  }
};

// One run through ops.h or the reference, in fp32.
struct ConvRun {
  std::vector<float> out, final_state, dx, dweight, dbias, dstate;
  ConvRun(const ConvInputs& in, bool reference_kernels) {
    const ConvCase& c = in.c;
    const std::vector<float> x = to_float(in.x), w = to_float(in.weight), bias = to_float(in.bias),
                             initial = to_float(in.state), dout = to_float(in.dout), dfinal = to_float(in.dfinal);
    out.assign(x.size(), kPad), final_state = initial;
    const ConvArgs forward{.batch = c.B, .length = c.L, .channels = c.E, .width = c.W, .x = x.data(), .x_ld = c.E,
                           .weight = w.data(), .bias = bias.data(), .state = final_state.data(), .out = out.data(),
                           .out_ld = c.E, .positions = in.positions()};
    dx.assign(x.size(), kPad), dweight.assign(w.size(), 0.0f), dbias.assign(bias.size(), 0.0f);
    dstate.assign(initial.size(), kPad);
    ConvBackwardArgs g{.forward = forward, .dout = dout.data(), .dout_ld = c.E, .dx = dx.data(), .dx_ld = c.E,
                       .dweight = dweight.data(), .dbias = dbias.data(), .dstate_final = dfinal.data(),
                       .dstate = dstate.data()};
    g.forward.state = const_cast<float*>(initial.data());  // read only in the backward
    if (reference_kernels) {
      reference::causal_conv1d_silu(forward);
      reference::causal_conv1d_silu_backward(g);
    } else {
      causal_conv1d_silu(forward);
      causal_conv1d_silu_backward(g);
    }
  }
};

const std::vector<ConvCase>& conv_cases() {
  static const std::vector<ConvCase> cases = {
      {"continuing rows, no positions", 2, 6, 3, 4, {}},
      {"restarts inside rows", 2, 7, 3, 4, packed_positions({{3, 1, 3}, {2, 5}})},
      {"rows continuing at position 1 and 5, then restarting", 2, 6, 2, 4, packed_positions({{2, 4}, {6}}, 1)},
      {"shorter than the state", 2, 2, 3, 4, {}},
      {"shorter than the state, second token restarts", 1, 2, 2, 4, {1, 0}},
      {"width 1", 1, 4, 2, 1, packed_positions({{2, 2}})},
  };
  return cases;
}

TEST(ConvStates, ReferenceMatchesDoubleForwardAndFiniteDifferences) {
  Margin margin{"conv reference vs double and finite differences"};
  Rng rng(31);
  for (const ConvCase& c : conv_cases()) {
    SCOPED_TRACE(c.name);
    ConvInputs in(rng, c);
    const ConvRun run(in, true);
    std::vector<double> out, final_state;
    in.forward(out, final_state);
    margin.add(expect_close("out", run.out, out, 1e-6));
    margin.add(expect_close("final state", run.final_state, final_state, 1e-6));
    auto loss = [&] { return in.loss(); };
    margin.add(expect_close("dstate", run.dstate, numeric_gradient(in.state, loss), 1e-4));
    margin.add(expect_close("dx", run.dx, numeric_gradient(in.x, loss), 1e-4));
    margin.add(expect_close("dweight", run.dweight, numeric_gradient(in.weight, loss), 1e-4));
    margin.add(expect_close("dbias", run.dbias, numeric_gradient(in.bias, loss), 1e-4));
  }
}

TEST(ConvStates, KernelsMatchTheReference) {
  // 75 channels: a task of 64 and one of 11 (one 8-channel block and 3 left to the reference).
  const std::vector<ConvCase> cases = {
      {"restarts, continuing rows", 3, 23, 75, 4, packed_positions({{5, 1, 17}, {23}, {2, 2, 19}}, 2)},
      {"no positions", 2, 9, 75, 4, {}},
      {"shorter than the state", 2, 2, 16, 4, packed_positions({{2}, {1, 1}}, 1)},
  };
  Margin margin{"conv kernels vs reference"};
  Rng rng(32);
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(c.name);
    const ConvInputs in(rng, c);
    const ConvRun expected(in, true);
    const double rel = 8 * double(c.L + c.W + c.E) * kEps;
    for_each_level([&] {
      const ConvRun run(in, false);
      margin.add(expect_close("out", run.out, expected.out, rel));
      margin.add(expect_close("final state", run.final_state, expected.final_state, rel));
      margin.add(expect_close("dx", run.dx, expected.dx, rel));
      margin.add(expect_close("dweight", run.dweight, expected.dweight, rel));
      margin.add(expect_close("dbias", run.dbias, expected.dbias, rel));
      margin.add(expect_close("dstate", run.dstate, expected.dstate, rel));
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Scan

struct ScanCase {
  std::string name;
  int B;
  int64_t L, E, N;
  std::vector<int32_t> positions;  // empty: none
};

// Inputs in double (each a float), dense: x, dt, z, dy [B*L, E]; Bm, Cm [B*L, N]; A_log [E, N];
// D, dt_bias [E]; h0 and dfinal [B, E, N].
struct ScanInputs {
  ScanCase c;
  std::vector<double> x, dt, z, dy, Bm, Cm, A_log, D, dt_bias, h0, dfinal;
  ScanInputs(Rng& rng, const ScanCase& c_) : c(c_) {
    const size_t rows = size_t(c.B * c.L), states = size_t(c.B * c.E * c.N);
    x = random_values(rng, rows * c.E, -2, 2), z = random_values(rng, rows * c.E, -2, 2);
    dy = random_values(rng, rows * c.E, -1, 1), dt = random_values(rng, rows * c.E, -4, 0.5);
    Bm = random_values(rng, rows * c.N, -1.5, 1.5), Cm = random_values(rng, rows * c.N, -1.5, 1.5);
    A_log = random_values(rng, size_t(c.E * c.N), 0, std::log(16.0));
    D = random_values(rng, size_t(c.E), -1, 1), dt_bias = random_values(rng, size_t(c.E), -1, 1);
    h0 = random_values(rng, states, -2, 2), dfinal = random_values(rng, states, -1, 1);
  }
  const int32_t* positions() const { return c.positions.empty() ? nullptr : c.positions.data(); }
  // y [B*L, E] and the final state [B, E, N] by ops.h's comment, in double.
  void forward(std::vector<double>& y, std::vector<double>& final_state) const {
    y.assign(size_t(c.B * c.L * c.E), 0.0);
    final_state = h0;
    for (int b = 0; b < c.B; ++b)
      for (int64_t e = 0; e < c.E; ++e) {
        double* h = final_state.data() + (b * c.E + e) * c.N;
        for (int64_t t = 0; t < c.L; ++t) {
          const int64_t r = b * c.L + t, i = r * c.E + e;
          if (!c.positions.empty() && c.positions[size_t(r)] == 0) std::fill_n(h, c.N, 0.0);
          const double delta = softplus(dt[size_t(i)] + dt_bias[size_t(e)]);
          double out = D[size_t(e)] * x[size_t(i)];
          for (int64_t n = 0; n < c.N; ++n) {
            const double A = -std::exp(A_log[size_t(e * c.N + n)]);
            h[n] = std::exp(delta * A) * h[n] + delta * Bm[size_t(r * c.N + n)] * x[size_t(i)];
            out += h[n] * Cm[size_t(r * c.N + n)];
          }
          y[size_t(i)] = out * silu(z[size_t(i)]);
        }
      }
  }
  double loss() const {
    std::vector<double> y, final_state;
    forward(y, final_state);
    double sum = 0;
    for (size_t i = 0; i < y.size(); ++i) sum += dy[i] * y[i];
    for (size_t i = 0; i < final_state.size(); ++i) sum += dfinal[i] * final_state[i];
    return sum;
  }
};

struct ScanRun {
  std::vector<float> y, final_state, dx, ddt, dz, dB, dC, dD, ddt_bias, dA_log, dstate;
  ScanRun(const ScanInputs& in, bool reference_kernels, int64_t every) {
    const ScanCase& c = in.c;
    const std::vector<float> x = to_float(in.x), dt = to_float(in.dt), z = to_float(in.z), dy = to_float(in.dy),
                             Bm = to_float(in.Bm), Cm = to_float(in.Cm), D = to_float(in.D),
                             dt_bias = to_float(in.dt_bias), dfinal = to_float(in.dfinal);
    std::vector<float> A;
    for (double a : in.A_log) A.push_back(-float(std::exp(a)));  // as the model derives A
    const size_t rows = size_t(c.B * c.L);
    y.assign(rows * c.E, kPad), final_state = to_float(in.h0);
    std::vector<float> checkpoints(size_t(c.B * ((c.L + every - 1) / every) * c.E * c.N), kPad);
    const ScanArgs forward{.batch = c.B, .length = c.L, .d_inner = c.E, .d_state = c.N, .x = x.data(), .x_ld = c.E,
                           .dt = dt.data(), .dt_ld = c.E, .dt_bias = dt_bias.data(), .A = A.data(), .Bm = Bm.data(),
                           .Cm = Cm.data(), .bc_ld = c.N, .D = D.data(), .z = z.data(), .z_ld = c.E,
                           .state = final_state.data(), .y = y.data(), .y_ld = c.E, .checkpoints = checkpoints.data(),
                           .checkpoint_every = every, .positions = in.positions()};
    dx.assign(rows * c.E, kPad), ddt.assign(rows * c.E, kPad), dz.assign(rows * c.E, kPad);
    dB.assign(rows * c.N, kPad), dC.assign(rows * c.N, kPad);
    dD.assign(size_t(c.E), 0.0f), ddt_bias.assign(size_t(c.E), 0.0f), dA_log.assign(size_t(c.E * c.N), 0.0f);
    dstate.assign(final_state.size(), kPad);
    const ScanBackwardArgs g{.forward = forward, .dy = dy.data(), .dy_ld = c.E, .dx = dx.data(), .dx_ld = c.E,
                             .ddt = ddt.data(), .ddt_ld = c.E, .dB = dB.data(), .dC = dC.data(), .dbc_ld = c.N,
                             .dz = dz.data(), .dz_ld = c.E, .dD = dD.data(), .ddt_bias = ddt_bias.data(),
                             .dA_log = dA_log.data(), .dstate_final = dfinal.data(), .dstate = dstate.data()};
    if (reference_kernels) {
      reference::selective_scan(forward);
      reference::selective_scan_backward(g);
    } else {
      selective_scan(forward);
      selective_scan_backward(g);
    }
  }
  std::vector<std::pair<std::string, const std::vector<float>*>> gradients() const {
    return {{"dx", &dx}, {"ddt", &ddt}, {"dz", &dz},         {"dB", &dB},         {"dC", &dC},
            {"dD", &dD}, {"ddt_bias", &ddt_bias}, {"dA_log", &dA_log}, {"dstate", &dstate}};
  }
};

const std::vector<ScanCase>& scan_cases() {
  static const std::vector<ScanCase> cases = {
      {"continuing rows, no positions", 2, 7, 3, 4, {}},
      {"restarts inside rows", 2, 8, 3, 4, packed_positions({{3, 1, 4}, {2, 6}})},
      {"rows continuing at position 3, then restarting", 2, 6, 2, 3, packed_positions({{2, 4}, {6}}, 3)},
      {"every token restarts", 1, 4, 2, 3, {0, 0, 0, 0}},
  };
  return cases;
}

TEST(ScanStates, ReferenceMatchesDoubleForwardAndFiniteDifferences) {
  Margin margin{"scan reference vs double and finite differences"};
  Rng rng(33);
  for (const ScanCase& c : scan_cases()) {
    SCOPED_TRACE(c.name);
    ScanInputs in(rng, c);
    const ScanRun run(in, true, 3);  // chunks of 3: restarts at, after and between checkpoints
    std::vector<double> y, final_state;
    in.forward(y, final_state);
    margin.add(expect_close("y", run.y, y, 1e-5));
    margin.add(expect_close("final state", run.final_state, final_state, 1e-5));
    auto loss = [&] { return in.loss(); };
    const std::pair<std::string, std::vector<double>*> inputs[] = {
        {"dstate", &in.h0}, {"dx", &in.x}, {"ddt", &in.dt}, {"dz", &in.z}, {"dB", &in.Bm},
        {"dC", &in.Cm},     {"dD", &in.D}, {"ddt_bias", &in.dt_bias}, {"dA_log", &in.A_log}};
    for (const auto& [name, values] : inputs) {
      const auto grads = run.gradients();
      const auto ours = std::find_if(grads.begin(), grads.end(), [&](const auto& g) { return g.first == name; });
      ASSERT_NE(ours, grads.end());
      margin.add(expect_close(name, *ours->second, numeric_gradient(*values, loss), 1e-4));
    }
  }
}

TEST(ScanStates, KernelsMatchTheReferenceAtAnyCheckpointInterval) {
  // 75 channels: a task of 64 and one of 11 (one 8-channel block and 3 left to the reference).
  const std::vector<ScanCase> cases = {
      {"restarts, continuing rows", 3, 23, 75, 16, packed_positions({{5, 1, 17}, {23}, {2, 2, 19}}, 4)},
      {"no positions", 2, 9, 75, 16, {}},
  };
  Margin margin{"scan kernels vs reference"};
  Rng rng(34);
  for (const ScanCase& c : cases) {
    SCOPED_TRACE(c.name);
    const ScanInputs in(rng, c);
    const ScanRun expected(in, true, 4);
    const double rel = 8 * double(c.L + c.N + c.E) * kEps;
    for_each_level([&] {
      for (int64_t every : {1, 4, 5, 64}) {
        SCOPED_TRACE(cat("checkpoint every ", every));
        const ScanRun run(in, false, every);
        margin.add(expect_close("y", run.y, expected.y, rel));
        margin.add(expect_close("final state", run.final_state, expected.final_state, rel));
        const auto ours = run.gradients(), theirs = expected.gradients();
        for (size_t i = 0; i < ours.size(); ++i)
          margin.add(expect_close(ours[i].first, *ours[i].second, *theirs[i].second, rel));
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// A packed row against its documents as separate rows

// Rows [row0, row0 + length) of a [*, width] tensor.
std::vector<float> rows_of(const std::vector<float>& v, int64_t width, int64_t row0, int64_t length) {
  return {v.begin() + row0 * width, v.begin() + (row0 + length) * width};
}

TEST(PackedRows, EqualTheirDocumentsRunAlone) {
  const std::vector<int64_t> docs = {5, 1, 9, 3};
  const int64_t L = 18, E = 24, N = 8;
  const int W = 4;
  Margin margin{"packed row vs documents alone"};
  Rng rng(35);
  for_each_level([&] {
    // One packed row (first document from a zero state), and the same tokens as 4 rows of their own.
    ConvInputs conv(rng, {"packed", 1, L, E, W, packed_positions({docs})});
    ScanInputs scan(rng, {"packed", 1, L, E, N, packed_positions({docs})});
    std::fill(conv.state.begin(), conv.state.end(), 0.0), std::fill(scan.h0.begin(), scan.h0.end(), 0.0);
    std::fill(conv.dfinal.begin(), conv.dfinal.end(), 0.0), std::fill(scan.dfinal.begin(), scan.dfinal.end(), 0.0);
    const ConvRun conv_packed(conv, false);
    const ScanRun scan_packed(scan, false, 4);
    int64_t start = 0;
    for (int64_t len : docs) {
      SCOPED_TRACE(cat("document at ", start, " of length ", len));
      ConvInputs conv_doc = conv;
      conv_doc.c = {"alone", 1, len, E, W, {}};
      for (auto* v : {&conv_doc.x, &conv_doc.dout}) *v = std::vector<double>(v->begin() + start * E, v->begin() + (start + len) * E);
      ScanInputs scan_doc = scan;
      scan_doc.c = {"alone", 1, len, E, N, {}};
      for (auto* v : {&scan_doc.x, &scan_doc.dt, &scan_doc.z, &scan_doc.dy})
        *v = std::vector<double>(v->begin() + start * E, v->begin() + (start + len) * E);
      for (auto* v : {&scan_doc.Bm, &scan_doc.Cm}) *v = std::vector<double>(v->begin() + start * N, v->begin() + (start + len) * N);
      const ConvRun conv_alone(conv_doc, false);
      const ScanRun scan_alone(scan_doc, false, 4);
      const double rel = 1e-6;  // the same operations on the same values; only the blocking of sums may differ
      margin.add(expect_close("conv out", rows_of(conv_packed.out, E, start, len), conv_alone.out, rel));
      margin.add(expect_close("conv dx", rows_of(conv_packed.dx, E, start, len), conv_alone.dx, rel));
      margin.add(expect_close("scan y", rows_of(scan_packed.y, E, start, len), scan_alone.y, rel));
      for (auto [name, field, width] : {std::tuple{"scan dx", &ScanRun::dx, E}, {"scan ddt", &ScanRun::ddt, E},
                                        {"scan dz", &ScanRun::dz, E}, {"scan dB", &ScanRun::dB, N},
                                        {"scan dC", &ScanRun::dC, N}})
        margin.add(expect_close(name, rows_of(scan_packed.*field, width, start, len), scan_alone.*field, rel));
      if (start + len == L) {  // the last document's final states are the packed row's
        margin.add(expect_close("conv final state", conv_packed.final_state, conv_alone.final_state, rel));
        margin.add(expect_close("scan final state", scan_packed.final_state, scan_alone.final_state, rel));
      }
      start += len;
    }
  });
}

}  // namespace
}  // namespace mambacpp::ops
