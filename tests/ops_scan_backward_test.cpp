// The selective scan's training path: the states the forward saves (ScanArgs::checkpoints) and the
// hardware-aware backward (ops.h, selective_scan_backward).
//  - checkpoints equal the final states of forwards run on prefixes, at every kernel level;
//  - the reference backward (reference.h) matches central differences of a double-precision forward
//    written here, for every gradient, on odd sizes, with and without z, D and dt_bias;
//  - every kernel level matches the reference; chunk lengths 1, odd, 64 and longer than the
//    sequence give the same gradients; results repeat bit for bit, also across thread counts;
//    parameter gradients accumulate, everything else is overwritten and gaps between rows stay.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core/cpu_features.h"
#include "core/error.h"
#include "core/rng.h"
#include "ops/ops.h"
#include "ops/reference.h"
#include "ops_test_support.h"

namespace mambacpp::ops {
namespace {

using namespace testing;

constexpr double kEps = std::numeric_limits<float>::epsilon();

struct Shape {
  int B;
  int64_t L, E, N;
  bool z = true, D = true, dt_bias = true;
};

std::string describe(const Shape& s) {
  return cat("B ", s.B, " L ", s.L, " E ", s.E, " N ", s.N, s.z ? " z" : "", s.D ? " D" : "",
             s.dt_bias ? " dt_bias" : "");
}

// The inputs of one scan and dL/dy, dense and in double (each value a float, so the kernels see
// the same numbers): x, dt (before bias and softplus), z, dy [B*L, E]; Bm, Cm [B*L, N];
// A_log [E, N]; D, dt_bias [E]; h0 [B, E, N], the state before the first token.
struct Inputs {
  Shape s;
  std::vector<double> x, dt, z, dy, Bm, Cm, A_log, D, dt_bias, h0;

  // extreme: some dt inputs past softplus' threshold (20) and far below 0, as in ops_test.
  Inputs(Rng& rng, const Shape& shape, bool extreme = false) : s(shape) {
    const size_t rows = size_t(s.B * s.L);
    auto normal = [&](size_t n, double scale) {
      std::vector<double> v(n);
      for (double& d : v) d = double(float(rng.normal() * scale));
      return v;
    };
    auto uniform = [&](size_t n, double lo, double hi) {
      std::vector<double> v(n);
      for (double& d : v) d = double(float(lo + (hi - lo) * rng.uniform()));
      return v;
    };
    x = normal(rows * s.E, 1.0), z = normal(rows * s.E, 1.5), dy = normal(rows * s.E, 1.0);
    dt = uniform(rows * s.E, -4.0, 0.5);  // softplus: dt from 0.02 to 1
    if (extreme)
      for (size_t i = 0; i < dt.size(); i += 7) dt[i] = i % 2 ? 25.0 : -30.0;
    Bm = normal(rows * s.N, 1.0), Cm = normal(rows * s.N, 1.0);
    A_log = uniform(size_t(s.E * s.N), 0.0, std::log(16.0));  // A in [-16, -1], as log(1..16) at init
    D = normal(size_t(s.E), 1.0), dt_bias = uniform(size_t(s.E), -1.0, 1.0);
    h0 = normal(size_t(s.B * s.E * s.N), 1.0);
  }

  // The first `length` tokens of each sequence.
  Inputs prefix(int64_t length) const {
    Inputs p = *this;
    p.s.L = length;
    auto rows = [&](const std::vector<double>& v, int64_t width) {
      std::vector<double> out;
      for (int b = 0; b < s.B; ++b)
        out.insert(out.end(), v.begin() + b * s.L * width, v.begin() + (b * s.L + length) * width);
      return out;
    };
    p.x = rows(x, s.E), p.dt = rows(dt, s.E), p.z = rows(z, s.E), p.dy = rows(dy, s.E);
    p.Bm = rows(Bm, s.N), p.Cm = rows(Cm, s.N);
    return p;
  }
};

// sum over all outputs of dy * y, by the forward of ops.h's comment in double.
double loss_in_double(const Inputs& in) {
  const Shape& s = in.s;
  auto softplus = [](double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); };
  auto silu = [](double v) { return v / (1.0 + std::exp(-v)); };
  double loss = 0.0;
  std::vector<double> h(size_t(s.N));
  for (int b = 0; b < s.B; ++b)
    for (int64_t e = 0; e < s.E; ++e) {
      std::copy_n(in.h0.begin() + (b * s.E + e) * s.N, s.N, h.begin());
      for (int64_t t = 0; t < s.L; ++t) {
        const int64_t r = b * s.L + t, i = r * s.E + e;
        const double dt = softplus(in.dt[i] + (s.dt_bias ? in.dt_bias[e] : 0.0)), x = in.x[i];
        double y = s.D ? in.D[e] * x : 0.0;
        for (int64_t n = 0; n < s.N; ++n) {
          const double A = -std::exp(in.A_log[e * s.N + n]);
          h[n] = std::exp(dt * A) * h[n] + dt * in.Bm[r * s.N + n] * x;
          y += h[n] * in.Cm[r * s.N + n];
        }
        loss += in.dy[i] * (s.z ? y * silu(in.z[i]) : y);
      }
    }
  return loss;
}


std::vector<float> to_float(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

// Everything one forward + backward call touches, laid out as the model has it: x and z side by
// side in in_proj's output, B and C inside x_proj's output after a dt column; outputs strided too.
// Parameter gradients start at `start` (they accumulate).
struct ScanRun {
  Shape s;
  int64_t every;
  Strided xz, dt, bc, dy, y, dx, ddt, dz, dbc;
  std::vector<float> dt_bias, A, D, state, checkpoints, dD, ddt_bias, dA_log;

  ScanRun(const Inputs& in, int64_t every_, float start = 0.0f)
      : s(in.s), every(every_), xz(s.B * s.L, 2 * s.E, 2 * s.E + 1), dt(s.B * s.L, s.E, s.E + 2),
        bc(s.B * s.L, 1 + 2 * s.N, 2 * s.N + 3), dy(s.B * s.L, s.E, s.E + 3), y(s.B * s.L, s.E, s.E + 1),
        dx(s.B * s.L, s.E, s.E + 1), ddt(s.B * s.L, s.E, s.E + 3), dz(s.B * s.L, s.E, s.E + 2),
        dbc(s.B * s.L, 2 * s.N, 2 * s.N + 1) {
    for (int64_t r = 0; r < s.B * s.L; ++r) {
      for (int64_t e = 0; e < s.E; ++e) {
        const int64_t i = r * s.E + e;
        xz.row(r)[e] = float(in.x[i]), xz.row(r)[s.E + e] = float(in.z[i]);
        dt.row(r)[e] = float(in.dt[i]), dy.row(r)[e] = float(in.dy[i]);
      }
      bc.row(r)[0] = 0.0f;  // the dt_rank column
      for (int64_t n = 0; n < s.N; ++n)
        bc.row(r)[1 + n] = float(in.Bm[r * s.N + n]), bc.row(r)[1 + s.N + n] = float(in.Cm[r * s.N + n]);
    }
    dt_bias = to_float(in.dt_bias), D = to_float(in.D), state = to_float(in.h0);
    for (double a : in.A_log) A.push_back(-float(std::exp(a)));  // as the model derives A from A_log
    checkpoints.assign(size_t(s.B * ((s.L + every - 1) / every) * s.E * s.N), kPad);
    dD.assign(size_t(s.E), start), ddt_bias.assign(size_t(s.E), start), dA_log.assign(size_t(s.E * s.N), start);
  }
  ScanArgs forward() {
    return {.batch = s.B, .length = s.L, .d_inner = s.E, .d_state = s.N, .x = xz.data.data(), .x_ld = xz.ld,
            .dt = dt.data.data(), .dt_ld = dt.ld, .dt_bias = s.dt_bias ? dt_bias.data() : nullptr, .A = A.data(),
            .Bm = bc.data.data() + 1, .Cm = bc.data.data() + 1 + s.N, .bc_ld = bc.ld, .D = s.D ? D.data() : nullptr,
            .z = s.z ? xz.data.data() + s.E : nullptr, .z_ld = xz.ld, .state = state.data(), .y = y.data.data(),
            .y_ld = y.ld, .checkpoints = checkpoints.data(), .checkpoint_every = every};
  }
  // dD and ddt_bias are passed even when the forward has no D or dt_bias: they must stay untouched.
  ScanBackwardArgs backward() {
    return {.forward = forward(), .dy = dy.data.data(), .dy_ld = dy.ld, .dx = dx.data.data(), .dx_ld = dx.ld,
            .ddt = ddt.data.data(), .ddt_ld = ddt.ld, .dB = dbc.data.data(), .dC = dbc.data.data() + s.N,
            .dbc_ld = dbc.ld, .dz = dz.data.data(), .dz_ld = dz.ld, .dD = dD.data(), .ddt_bias = ddt_bias.data(),
            .dA_log = dA_log.data()};
  }
  // The gradients by name, dense (those the forward's options make exist).
  std::vector<std::pair<std::string, std::vector<float>>> gradients() const {
    std::vector<std::pair<std::string, std::vector<float>>> g = {
        {"dx", dx.columns(0, s.E)}, {"ddt", ddt.columns(0, s.E)}, {"dB", dbc.columns(0, s.N)},
        {"dC", dbc.columns(s.N, s.N)}, {"dA_log", dA_log}};
    if (s.z) g.emplace_back("dz", dz.columns(0, s.E));
    if (s.D) g.emplace_back("dD", dD);
    if (s.dt_bias) g.emplace_back("ddt_bias", ddt_bias);
    return g;
  }
  // Every buffer the backward may write, gaps included, for bit-for-bit comparisons.
  std::vector<std::pair<std::string, const std::vector<float>*>> written() const {
    return {{"dx", &dx.data}, {"ddt", &ddt.data}, {"dz", &dz.data}, {"dB and dC", &dbc.data},
            {"dD", &dD},      {"ddt_bias", &ddt_bias}, {"dA_log", &dA_log}};
  }
};

// Forward with checkpoints, then backward, through ops.h or reference.h.
void forward_backward(ScanRun& run, bool reference_kernels) {
  if (reference_kernels) {
    reference::selective_scan(run.forward());
    reference::selective_scan_backward(run.backward());
  } else {
    selective_scan(run.forward());
    selective_scan_backward(run.backward());
  }
}


// Every element within its bound; a failure names the worst one. Returns the largest error / bound.
double expect_within(const std::string& what, const std::vector<float>& actual, const std::vector<double>& expected,
                     const std::vector<double>& bound) {
  EXPECT_EQ(actual.size(), expected.size()) << what;
  size_t worst = 0, failures = 0;
  double worst_ratio = 0;
  for (size_t i = 0; i < actual.size() && i < expected.size(); ++i) {
    const double err = std::fabs(double(actual[i]) - expected[i]);
    const double ratio = err == err ? err / bound[i] : INFINITY;
    failures += !(err <= bound[i]);
    if (!(ratio <= worst_ratio)) worst_ratio = ratio, worst = i;
  }
  EXPECT_EQ(failures, 0u) << what << ": " << failures << " of " << actual.size()
                          << " elements out of bounds; worst at index " << worst << ": expected " << expected[worst]
                          << ", actual " << actual[worst] << ", bound " << bound[worst];
  return worst_ratio;
}

// Bit-for-bit equality; a failure names how many elements differ and the first of them.
void expect_same(const std::string& what, const float* actual, const float* expected, size_t count) {
  size_t differ = 0, first = 0;
  for (size_t i = 0; i < count; ++i)
    if (std::memcmp(&actual[i], &expected[i], sizeof(float)) != 0 && differ++ == 0) first = i;
  EXPECT_EQ(differ, 0u) << what << ": " << differ << " of " << count << " elements differ; first at index " << first
                        << ": expected " << expected[first] << ", actual " << actual[first];
}
void expect_same(const std::string& what, const std::vector<float>& actual, const std::vector<float>& expected) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  expect_same(what, actual.data(), expected.data(), actual.size());
}

// bound_i = rel (|expected_i| + rms(expected)): relative where the value is large, and where terms
// cancel to a small value, relative to the tensor's typical size.
std::vector<double> relative_bounds(const std::vector<double>& expected, double rel) {
  double sum_sq = 0;
  for (double v : expected) sum_sq += v * v;
  const double rms = std::sqrt(sum_sq / double(std::max<size_t>(expected.size(), 1)));
  std::vector<double> bound;
  for (double v : expected) bound.push_back(rel * (std::fabs(v) + rms) + 1e-30);
  return bound;
}

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// The largest err / bound a test saw, printed at its end to show the margin.
struct Margin {
  std::string name;
  double worst = 0;
  void add(double r) { worst = std::max(worst, r); }
  ~Margin() { std::printf("[ margin   ] %s: worst error / bound = %.3g\n", name.c_str(), worst); }
};

// ---------------------------------------------------------------------------------------------
// Checkpoints

// The checkpoint before token k * every is the final state of a forward over the first k * every
// tokens: the same operations per channel in the same order, so equal bit for bit. Saving them
// changes neither y nor the final state.
TEST(ScanCheckpoints, EqualStatesOfPrefixForwards) {
  const Shape shape{2, 13, 37, 16};  // 37 channels: four 8-channel blocks and 5 left over
  Rng rng(21);
  const Inputs in(rng, shape);
  for (bool use_reference : {true, false}) {
    auto scan = [&](const ScanArgs& a) { use_reference ? reference::selective_scan(a) : selective_scan(a); };
    auto check = [&] {
      for (int64_t every : {1, 3, 5, 13, 20}) {
        SCOPED_TRACE(cat("every ", every));
        ScanRun with(in, every), without(in, every);
        scan(with.forward());
        ScanArgs plain = without.forward();
        plain.checkpoints = nullptr;
        scan(plain);
        expect_same("y", with.y.data, without.y.data);
        expect_same("final state", with.state, without.state);
        const int64_t count = (shape.L + every - 1) / every, per_sequence = shape.E * shape.N;
        for (int64_t k = 0; k < count; ++k) {
          ScanRun prefix(in.prefix(k * every), every);
          ScanArgs a = prefix.forward();
          a.checkpoints = nullptr;
          scan(a);
          for (int b = 0; b < shape.B; ++b)
            expect_same(cat("checkpoint ", k, " of sequence ", b), with.checkpoints.data() + (b * count + k) * per_sequence,
                        prefix.state.data() + b * per_sequence, size_t(per_sequence));
        }
      }
    };
    SCOPED_TRACE(use_reference ? "reference" : "ops");
    if (use_reference) check();
    else for_each_level(check);
  }
}

// ---------------------------------------------------------------------------------------------
// The reference backward against finite differences

// Central differences of the double forward with step 1e-5 (inputs are O(1)): truncation error
// ~1e-10 |f'''| and rounding ~1e-16 |loss| / 1e-5, both far below what fp32 can resolve. The fp32
// backward sums chains of about L + N rounded terms, within (L + N) eps ~ 2e-6 of their
// magnitude; the bound 1e-4 (|fd| + rms of the tensor) leaves room for cancellation and is still
// far below the O(1) relative error of a wrong or missing term.
TEST(ScanBackwardReference, MatchesFiniteDifferences) {
  const Shape shapes[] = {{2, 13, 11, 5, true, true, true},
                          {2, 13, 11, 5, false, false, false},
                          {1, 6, 3, 4, true, false, true},
                          {2, 5, 4, 3, false, true, false}};
  Margin margin{"reference backward vs finite differences"};
  Rng rng(22);
  for (const Shape& shape : shapes) {
    SCOPED_TRACE(describe(shape));
    Inputs in(rng, shape);
    ScanRun run(in, 4);
    forward_backward(run, true);
    std::vector<std::pair<std::string, std::vector<double>*>> inputs = {
        {"dx", &in.x}, {"ddt", &in.dt}, {"dB", &in.Bm}, {"dC", &in.Cm}, {"dA_log", &in.A_log}};
    if (shape.z) inputs.emplace_back("dz", &in.z);
    if (shape.D) inputs.emplace_back("dD", &in.D);
    if (shape.dt_bias) inputs.emplace_back("ddt_bias", &in.dt_bias);
    const auto gradients = run.gradients();
    ASSERT_EQ(gradients.size(), inputs.size());
    for (const auto& [name, values] : inputs) {
      const double h = 1e-5;
      std::vector<double> fd(values->size());
      for (size_t i = 0; i < values->size(); ++i) {
        const double v = (*values)[i];
        (*values)[i] = v + h;
        const double up = loss_in_double(in);
        (*values)[i] = v - h;
        const double down = loss_in_double(in);
        (*values)[i] = v;
        fd[i] = (up - down) / (2 * h);
      }
      const auto ours = std::find_if(gradients.begin(), gradients.end(), [&](const auto& g) { return g.first == name; });
      ASSERT_NE(ours, gradients.end()) << name;
      margin.add(expect_within(name, ours->second, fd, relative_bounds(fd, 1e-4)));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Kernel levels against the reference

// Both sides compute the same sums in different orders (per lane then across lanes, blocks of
// channels, vector exp within 2 ulp of libm's): chains of about L + N terms for the per-token
// gradients and the parameter sums, plus E channels for dB and dC. 8 (L + N + E) eps relative to
// |value| + rms covers the reassociation with room for cancellation.
double kernel_bound_rel(const Shape& s) { return 8 * double(s.L + s.N + s.E) * kEps; }

const Shape kKernelShapes[] = {
    {2, 70, 96, 16, true, true, true},   // one task of 64 channels and one of 32
    {3, 23, 75, 17, true, false, true},  // 11 channels left of 64: one block and 3 for the reference; 2N % 8 = 2
    {1, 1, 16, 16, false, true, false},  // one token
    {2, 9, 8, 1, false, false, false},   // one state
};

TEST(ScanBackwardKernels, MatchTheReference) {
  Margin margin{"kernels vs reference backward"};
  Rng rng(23);
  for (const Shape& shape : kKernelShapes) {
    SCOPED_TRACE(describe(shape));
    const Inputs in(rng, shape, true);
    ScanRun expected(in, 16);
    forward_backward(expected, true);
    const auto reference_grads = expected.gradients();
    for_each_level([&] {
      ScanRun run(in, 16);
      forward_backward(run, false);
      const auto grads = run.gradients();
      for (size_t i = 0; i < grads.size(); ++i) {
        const std::vector<double> ref = to_double(reference_grads[i].second);
        margin.add(expect_within(grads[i].first, grads[i].second, ref, relative_bounds(ref, kernel_bound_rel(shape))));
      }
    });
  }
}

// The chunk length only decides where the states are recomputed from: the recomputation repeats
// the forward's operations, so the states, and then every gradient, are the same bit for bit.
TEST(ScanBackwardKernels, ChunkLengthDoesNotChangeGradients) {
  Rng rng(24);
  for (const Shape& shape : {kKernelShapes[0], kKernelShapes[1]}) {
    SCOPED_TRACE(describe(shape));
    const Inputs in(rng, shape);
    for_each_level([&] {
      ScanRun whole(in, shape.L + 5);
      forward_backward(whole, false);
      for (int64_t every : {1, 3, 64}) {
        SCOPED_TRACE(cat("checkpoint_every ", every));
        ScanRun run(in, every);
        forward_backward(run, false);
        const auto a = run.gradients(), b = whole.gradients();
        for (size_t i = 0; i < a.size(); ++i) expect_same(a[i].first, a[i].second, b[i].second);
      }
    });
  }
}

// Two calls give the same bits, and so do one and several threads: the partial sums of the tasks
// are added in a fixed order. Parameter gradients are added to what the buffers held; every other
// output is overwritten, the gaps between rows and the gradients of absent inputs untouched.
TEST(ScanBackwardKernels, RepeatableAccumulatingAndConfined) {
  Rng rng(25);
  for (const Shape& shape : {kKernelShapes[0], Shape{2, 70, 96, 16, false, false, false}}) {
    SCOPED_TRACE(describe(shape));
    const Inputs in(rng, shape);
    for_each_level([&] {
      ScanRun first(in, 16), second(in, 16), one_thread(in, 16), accumulated(in, 16, 0.75f);
      forward_backward(first, false);
      forward_backward(second, false);
      const int threads = omp_get_max_threads();
      omp_set_num_threads(1);
      forward_backward(one_thread, false);
      omp_set_num_threads(threads);
      forward_backward(accumulated, false);
      const auto w1 = first.written(), w2 = second.written(), w3 = one_thread.written();
      for (size_t i = 0; i < w1.size(); ++i) {
        expect_same(cat(w1[i].first, ": second call"), *w2[i].second, *w1[i].second);
        expect_same(cat(w1[i].first, ": one thread against ", threads), *w3[i].second, *w1[i].second);
      }
      for (auto p : {&ScanRun::dD, &ScanRun::ddt_bias, &ScanRun::dA_log})
        for (size_t i = 0; i < (first.*p).size(); ++i) {
          const bool present = p == &ScanRun::dA_log || (p == &ScanRun::dD ? shape.D : shape.dt_bias);
          // the kernels add their sum to the buffer in one rounding: 0.75 + sum, and 0 + sum = sum
          EXPECT_EQ((accumulated.*p)[i], present ? 0.75f + (first.*p)[i] : 0.75f) << "parameter element " << i;
          if (!present) {
            EXPECT_EQ((first.*p)[i], 0.0f);
          }
        }
      auto gaps_untouched = [](const Strided& m, int64_t first_col) {
        for (size_t i = 0; i < m.data.size(); ++i)
          if (int64_t(i) % m.ld >= first_col && m.data[i] != kPad) return false;
        return true;
      };
      EXPECT_TRUE(gaps_untouched(first.dx, shape.E));
      EXPECT_TRUE(gaps_untouched(first.ddt, shape.E));
      EXPECT_TRUE(gaps_untouched(first.dbc, 2 * shape.N));
      EXPECT_TRUE(gaps_untouched(first.dz, shape.z ? shape.E : 0)) << "dz without z must stay untouched";
    });
  }
}

TEST(ScanBackwardKernels, RefusesAForwardWithoutCheckpoints) {
  Rng rng(26);
  ScanRun run(Inputs(rng, {1, 4, 8, 4}), 2);
  ScanBackwardArgs g = run.backward();
  g.forward.checkpoints = nullptr;
  EXPECT_THROW(selective_scan_backward(g), Error);
  EXPECT_THROW(reference::selective_scan_backward(g), Error);
}

}  // namespace
}  // namespace mambacpp::ops
