// Ops against hand-derivable cases, then every fast kernel (each kernel level this CPU runs, both
// linear paths) against the fp32 scalar reference (ops/reference.h) on many shapes: odd sizes,
// strided rows as the model uses them, all weight dtypes, accumulate on and off.
//
// Tolerances are argued, not tuned: a bound per element from the magnitudes involved, computed
// by running the reference on absolute values (|x|, |w|, ...), which gives sum |terms| for every
// output. Both sides round each operation, so two different summation orders of K terms differ by
// at most 2 K eps sum|terms|. Padding between rows (ld > width) must come back untouched (bound 0).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "core/error.h"
#include "core/half.h"
#include "core/rng.h"
#include "ops/ops.h"
#include "ops/reference.h"
#include "ops_test_support.h"

namespace mambacpp::ops {
namespace {

using namespace testing;

constexpr double kEps = std::numeric_limits<float>::epsilon();  // 2^-23

float silu(float x) { return x / (1.0f + std::exp(-x)); }

// ---------------------------------------------------------------------------------------------
// Hand-derivable cases

TEST(OpsHandCases, LinearTinyProduct) {
  // x [2, 3], w [2, 3]: y = x w^T + b, computed by hand.
  const std::vector<float> x = {1, 2, 3, 4, 5, 6};
  const std::vector<float> w = {1, 0, -1, 2, 1, 0};
  const std::vector<float> bias = {0.5f, -1};
  std::vector<float> y(4, 10.0f);
  linear(x.data(), 3, 2, Weight{w.data(), DType::F32, 2, 3}, bias.data(), y.data(), 2, false);
  EXPECT_EQ(y, (std::vector<float>{-1.5f, 3, -1.5f, 12}));
  linear(x.data(), 3, 2, Weight{w.data(), DType::F32, 2, 3}, nullptr, y.data(), 2, true);
  EXPECT_EQ(y, (std::vector<float>{-3.5f, 7, -3.5f, 25}));
}

TEST(OpsHandCases, LinearHalfWeights) {
  // 1.5, -2 and 0.25 are exact in BF16 and F16.
  const std::vector<float> x = {2, 4, 8};
  const std::vector<uint16_t> bf = {f32_to_bf16(1.5f), f32_to_bf16(-2.0f), f32_to_bf16(0.25f)};
  const std::vector<uint16_t> hf = {f32_to_f16(1.5f), f32_to_f16(-2.0f), f32_to_f16(0.25f)};
  float y = 0;
  linear(x.data(), 3, 1, Weight{bf.data(), DType::BF16, 1, 3}, nullptr, &y, 1, false);
  EXPECT_EQ(y, 3.0f - 8.0f + 2.0f);
  linear(x.data(), 3, 1, Weight{hf.data(), DType::F16, 1, 3}, nullptr, &y, 1, false);
  EXPECT_EQ(y, -3.0f);
}

TEST(OpsHandCases, EmbeddingGathersRows) {
  const std::vector<float> table = {0, 1, 10, 11, 20, 21};
  const std::vector<int32_t> ids = {2, 0, 2};
  std::vector<float> out(3 * 3, -1.0f);  // ld 3 > width 2: the third column stays untouched
  embedding(ids.data(), 3, Weight{table.data(), DType::F32, 3, 2}, out.data(), 3);
  EXPECT_EQ(out, (std::vector<float>{20, 21, -1, 0, 1, -1, 20, 21, -1}));
}

TEST(OpsHandCases, RmsnormOfConstantRow) {
  // A row of c: mean(x^2) = c^2, so y = c / sqrt(c^2 + eps) * w.
  const float c = -3.0f, eps = 1e-5f;
  std::vector<float> x(5, c), w = {1, 2, 3, 4, 5}, y(5);
  rmsnorm(x.data(), 5, 1, 5, w.data(), eps, y.data(), 5);
  for (int d = 0; d < 5; ++d) EXPECT_NEAR(y[d], c / std::sqrt(c * c + eps) * w[d], 1e-6f);
}

TEST(OpsHandCases, ConvWithOneHotWeightIsAShift) {
  // Weight one-hot at k = 1 of W = 4: out[t] = silu(x[t - 2]), reaching into the state for t < 2.
  const int W = 4, E = 2, L = 5;
  std::vector<float> x(L * E), w(E * W, 0.0f), state = {-1, -2, -3, -4, -5, -6}, out(L * E);
  for (int i = 0; i < L * E; ++i) x[i] = 0.5f * float(i);
  for (int e = 0; e < E; ++e) w[e * W + 1] = 1.0f;
  ConvArgs a{.batch = 1, .length = L, .channels = E, .width = W, .x = x.data(), .x_ld = E, .weight = w.data(),
             .bias = nullptr, .state = state.data(), .out = out.data(), .out_ld = E};
  const std::vector<float> old_state = state;
  causal_conv1d_silu(a);
  for (int e = 0; e < E; ++e) {
    EXPECT_FLOAT_EQ(out[0 * E + e], silu(old_state[e * 3 + 1]));
    EXPECT_FLOAT_EQ(out[1 * E + e], silu(old_state[e * 3 + 2]));
    for (int t = 2; t < L; ++t) EXPECT_FLOAT_EQ(out[t * E + e], silu(x[(t - 2) * E + e]));
    for (int k = 0; k < W - 1; ++k) EXPECT_EQ(state[e * 3 + k], x[(L - 3 + k) * E + e]);  // last W-1 inputs
  }
}

TEST(OpsHandCases, ScanWithZeroBIsSkipTimesGate) {
  // B = 0 and a zero state: h stays 0, so y = D * x * silu(z).
  const int E = 3, N = 4, L = 2;
  std::vector<float> x = {1, -2, 3, 0.5f, 4, -1}, dt(L * E, 0.3f), dt_bias(E, 0.1f), A(E * N, -1.0f);
  std::vector<float> bc(L * 2 * N, 0.0f), D = {2, 3, -1}, z = {0.5f, -1, 2, 1, 0, -3};
  std::vector<float> state(E * N, 0.0f), y(L * E);
  for (int t = 0; t < L; ++t)
    for (int n = 0; n < N; ++n) bc[t * 2 * N + N + n] = 1.0f;  // C = 1
  ScanArgs a{.batch = 1, .length = L, .d_inner = E, .d_state = N, .x = x.data(), .x_ld = E, .dt = dt.data(),
             .dt_ld = E, .dt_bias = dt_bias.data(), .A = A.data(), .Bm = bc.data(), .Cm = bc.data() + N,
             .bc_ld = 2 * N, .D = D.data(), .z = z.data(), .z_ld = E, .state = state.data(), .y = y.data(),
             .y_ld = E};
  selective_scan(a);
  for (int i = 0; i < L * E; ++i) EXPECT_NEAR(y[i], D[i % E] * x[i] * silu(z[i]), 1e-6f) << "element " << i;
  for (float h : state) EXPECT_EQ(h, 0.0f);
}

TEST(OpsHandCases, ScanOneStepByHand) {
  // One channel, one state: dt = softplus(0) = ln 2, h = exp(-ln2 * 1) * 4 + ln2 * 2 * 3.
  const float x = 3, dt_in = 0, A = -1, B = 2, C = 0.5f, D = 0, z = 20;
  float h = 4, y = 0;
  ScanArgs a{.batch = 1, .length = 1, .d_inner = 1, .d_state = 1, .x = &x, .x_ld = 1, .dt = &dt_in, .dt_ld = 1,
             .dt_bias = nullptr, .A = &A, .Bm = &B, .Cm = &C, .bc_ld = 1, .D = &D, .z = &z, .z_ld = 1,
             .state = &h, .y = &y, .y_ld = 1};
  selective_scan(a);
  const double ln2 = std::log(2.0), h_expected = 0.5 * 4 + ln2 * 2 * 3;
  EXPECT_NEAR(h, h_expected, 1e-6);
  EXPECT_NEAR(y, h_expected * 0.5 * (20 / (1 + std::exp(-20.0))), 1e-5);
}

TEST(OpsKernelLevels, UnknownLevelIsRefused) {
  EXPECT_THROW(set_kernel_level_for_testing("avx9000"), Error);
  for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
    EXPECT_FALSE(linear_uses_gemm(1, dtype));
    EXPECT_TRUE(linear_uses_gemm(512, dtype));
  }
}

// ---------------------------------------------------------------------------------------------
// Fast kernels against the reference



void fill_normal(Rng& rng, float scale, Strided& m) {
  for (size_t i = 0; i < m.data.size(); ++i)
    if (!m.is_gap(i)) m.data[i] = float(rng.normal() * scale);
}
std::vector<float> normal(Rng& rng, size_t n, double scale) {
  std::vector<float> v(n);
  for (float& f : v) f = float(rng.normal() * scale);
  return v;
}
std::vector<float> uniform(Rng& rng, size_t n, double lo, double hi) {
  std::vector<float> v(n);
  for (float& f : v) f = float(lo + (hi - lo) * rng.uniform());
  return v;
}
std::vector<float> abs_of(std::vector<float> v) {
  for (float& f : v) f = std::fabs(f);
  return v;
}
// |m| on the rows, 0 in the gaps (so that a bound built from it is 0 there).
Strided abs_rows(Strided m) {
  for (size_t i = 0; i < m.data.size(); ++i) m.data[i] = m.is_gap(i) ? 0.0f : std::fabs(m.data[i]);
  return m;
}

// Every element within its bound; on failure names the worst one (largest error / bound).
// Returns the worst ratio so tests can report their margin.
double expect_within(const std::string& what, const std::vector<float>& actual, const std::vector<float>& expected,
                     const std::vector<double>& bound) {
  EXPECT_EQ(actual.size(), expected.size());
  size_t worst = 0, failures = 0;
  double worst_ratio = 0;
  for (size_t i = 0; i < actual.size() && i < expected.size(); ++i) {
    const double err = std::fabs(double(actual[i]) - double(expected[i]));
    const bool bad = !(err <= bound[i]);  // also catches NaN
    const double ratio = bad && !(err == err) ? INFINITY : (bound[i] > 0 ? err / bound[i] : (err > 0 ? INFINITY : 0));
    failures += bad;
    if (ratio > worst_ratio || (bad && failures == 1)) worst_ratio = ratio, worst = i;
  }
  EXPECT_EQ(failures, 0u) << what << ": " << failures << " of " << actual.size()
                          << " elements out of bounds; worst at index " << worst << ": expected " << expected[worst]
                          << ", actual " << actual[worst] << ", bound " << bound[worst];
  return worst_ratio;
}

// The largest err/bound a test saw, printed at its end to show the margin.
struct Margin {
  std::string name;
  double worst = 0;
  void add(double r) { worst = std::max(worst, r); }
  ~Margin() { std::printf("[ margin   ] %s: worst error / bound = %.3g\n", name.c_str(), worst); }
};

// A weight matrix held in one of the three dtypes, plus the same with every element's sign cleared.
struct TestWeight {
  DType dtype;
  int64_t out = 0, in = 0;
  std::vector<float> f32, f32_abs;
  std::vector<uint16_t> half, half_abs;
  TestWeight(Rng& rng, DType dtype_, int64_t out_, int64_t in_, double scale) : dtype(dtype_), out(out_), in(in_) {
    f32 = normal(rng, size_t(out * in), scale);
    if (dtype == DType::F32) {
      f32_abs = abs_of(f32);
      return;
    }
    for (float f : f32) half.push_back(dtype == DType::BF16 ? f32_to_bf16(f) : f32_to_f16(f));
    for (uint16_t h : half) half_abs.push_back(h & 0x7fffu);
  }
  Weight weight() const { return {dtype == DType::F32 ? (const void*)f32.data() : half.data(), dtype, out, in}; }
  Weight abs_weight() const {
    return {dtype == DType::F32 ? (const void*)f32_abs.data() : half_abs.data(), dtype, out, in};
  }
};

const DType kWeightTypes[] = {DType::F32, DType::BF16, DType::F16};

TEST(OpsVsReference, Linear) {
  struct Case { int64_t M, K, O; };
  // K above 1024 goes through the streaming kernel in pieces of K (1100: three uneven ones).
  const Case cases[] = {{1, 1, 1},     {1, 7, 5},    {2, 8, 6},     {3, 33, 13},   {4, 64, 7},
                        {5, 100, 50},  {7, 9, 61},   {9, 768, 40},  {17, 31, 19},  {33, 40, 12},
                        {64, 17, 9},   {130, 24, 33}, {1, 1536, 9}, {5, 1100, 7}, {20, 1536, 6}};
  Margin margin{"linear"};
  Rng rng(1);
  for (const Case& c : cases)
    for (DType dtype : kWeightTypes)
      for (bool accumulate : {false, true}) {
        SCOPED_TRACE(cat("M ", c.M, " K ", c.K, " O ", c.O, " ", dtype_name(dtype), accumulate ? " +=" : " ="));
        const TestWeight w(rng, dtype, c.O, c.K, 0.2);
        Strided x(c.M, c.K, c.K + 3), y0(c.M, c.O, c.O + 2);
        fill_normal(rng, 1.0, x);
        if (accumulate) fill_normal(rng, 1.0, y0);
        const bool with_bias = (c.M + c.K) % 2 == 0 || accumulate;
        const std::vector<float> bias = normal(rng, size_t(c.O), 1.0), bias_abs = abs_of(bias);
        const float* b = with_bias ? bias.data() : nullptr;
        Strided expected = y0, mag = abs_rows(y0);
        const Strided x_abs = abs_rows(x);
        reference::linear(x.data.data(), x.ld, c.M, w.weight(), b, expected.data.data(), y0.ld, accumulate);
        reference::linear(x_abs.data.data(), x.ld, c.M, w.abs_weight(), with_bias ? bias_abs.data() : nullptr,
                          mag.data.data(), y0.ld, accumulate);
        std::vector<double> bound(mag.data.size());
        for (size_t i = 0; i < bound.size(); ++i) bound[i] = 2 * double(c.K + 2) * kEps * mag.data[i];
        for_each_level([&] {
          for (LinearPath path : {LinearPath::Streaming, LinearPath::Gemm}) {
            SCOPED_TRACE(path == LinearPath::Gemm ? "sgemm path" : "streaming path");
            force_linear_path_for_testing(path);
            Strided y = y0;
            linear(x.data.data(), x.ld, c.M, w.weight(), b, y.data.data(), y.ld, accumulate);
            margin.add(expect_within("linear y", y.data, expected.data, bound));
          }
          force_linear_path_for_testing(LinearPath::Auto);
        });
      }
}

TEST(OpsVsReference, Embedding) {
  Rng rng(2);
  for (DType dtype : kWeightTypes)
    for (int64_t D : {1, 7, 8, 33, 768}) {
      SCOPED_TRACE(cat(dtype_name(dtype), " D ", D));
      const int64_t V = 11;
      const TestWeight table(rng, dtype, V, D, 1.0);
      const std::vector<int32_t> ids = {0, 10, 3, 3, 7, 0, 1, 9, 10};
      Strided expected(int64_t(ids.size()), D, D + 5);
      reference::embedding(ids.data(), int64_t(ids.size()), table.weight(), expected.data.data(), expected.ld);
      for_each_level([&] {
        Strided out(int64_t(ids.size()), D, D + 5);
        embedding(ids.data(), int64_t(ids.size()), table.weight(), out.data.data(), out.ld);
        EXPECT_EQ(out.data, expected.data);  // widening is exact
      });
    }
}

TEST(OpsVsReference, Rmsnorm) {
  Margin margin{"rmsnorm"};
  Rng rng(3);
  for (int64_t D : {1, 7, 8, 31, 32, 33, 100, 768})
    for (int64_t M : {1, 3, 70})
      for (bool with_weight : {false, true}) {
        SCOPED_TRACE(cat("D ", D, " M ", M, with_weight ? " weighted" : " weightless"));
        Strided x(M, D, D + 1);
        fill_normal(rng, 3.0, x);
        const std::vector<float> w = normal(rng, size_t(D), 1.0);
        const float* wp = with_weight ? w.data() : nullptr;
        Strided expected(M, D, D + 2);
        reference::rmsnorm(x.data.data(), x.ld, M, D, wp, 1e-5f, expected.data.data(), expected.ld);
        // The sum of D squares is within D eps of its value on either side, so 1/sqrt within
        // D/2 eps + 2 eps, then two products: |y| (D + 8) eps per side covers both.
        std::vector<double> bound(expected.data.size());
        for (size_t i = 0; i < bound.size(); ++i)
          bound[i] = expected.is_gap(i) ? 0.0 : 2 * double(D + 8) * kEps * std::fabs(expected.data[i]);
        for_each_level([&] {
          Strided y(M, D, D + 2);
          rmsnorm(x.data.data(), x.ld, M, D, wp, 1e-5f, y.data.data(), y.ld);
          margin.add(expect_within("rmsnorm y", y.data, expected.data, bound));
          Strided in_place = x;  // y may equal x
          rmsnorm(in_place.data.data(), x.ld, M, D, wp, 1e-5f, in_place.data.data(), x.ld);
          Strided expected_in_place = x;
          reference::rmsnorm(x.data.data(), x.ld, M, D, wp, 1e-5f, expected_in_place.data.data(), x.ld);
          std::vector<double> bound_in_place(x.data.size());
          for (size_t i = 0; i < bound_in_place.size(); ++i)
            bound_in_place[i] = x.is_gap(i) ? 0.0 : 2 * double(D + 8) * kEps * std::fabs(expected_in_place.data[i]);
          margin.add(expect_within("rmsnorm in place", in_place.data, expected_in_place.data, bound_in_place));
        });
      }
}

// Inputs of one conv call laid out as the model has them: x inside a wider in_proj output.
struct ConvCase {
  int B;
  int64_t L, E;
  int W;
  bool bias;
};

struct ConvData {
  ConvCase c;
  Strided x, out;
  std::vector<float> w, bias, state;
  ConvData(Rng& rng, const ConvCase& c_)
      : c(c_), x(c_.B * c_.L, c_.E, 2 * c_.E + 3), out(c_.B * c_.L, c_.E, c_.E + 1) {
    fill_normal(rng, 1.0, x);
    w = normal(rng, size_t(c.E * c.W), 0.5);
    bias = normal(rng, size_t(c.E), 0.5);
    state = normal(rng, size_t(c.B * c.E * (c.W - 1)), 1.0);
  }
  ConvArgs args() {
    return {.batch = c.B, .length = c.L, .channels = c.E, .width = c.W, .x = x.data.data(), .x_ld = x.ld,
            .weight = w.data(), .bias = c.bias ? bias.data() : nullptr, .state = state.data(),
            .out = out.data.data(), .out_ld = out.ld};
  }
};

TEST(OpsVsReference, CausalConv1dSilu) {
  const ConvCase cases[] = {{1, 1, 1, 4, true},  {1, 2, 7, 4, false}, {2, 3, 8, 4, true},  {3, 7, 9, 2, true},
                            {5, 1, 67, 4, true}, {1, 513, 24, 4, true}, {4, 2, 130, 5, false}, {2, 5, 16, 1, true}};
  Margin margin{"conv"};
  Rng rng(4);
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(cat("B ", c.B, " L ", c.L, " E ", c.E, " W ", c.W, c.bias ? " bias" : ""));
    ConvData input(rng, c);
    ConvData expected = input, mag = input;
    reference::causal_conv1d_silu(expected.args());
    mag.x = abs_rows(mag.x), mag.w = abs_of(mag.w), mag.bias = abs_of(mag.bias), mag.state = abs_of(mag.state);
    reference::causal_conv1d_silu(mag.args());
    // The pre-activation sums W + 1 terms: the two sides differ by at most 2 (W + 1) eps m,
    // m = sum |terms| <= 2 silu(m) (silu(m) >= m / 2 for m >= 0), and silu's slope is below 1.1;
    // the two SiLU evaluations add up to 8 eps |y|.
    std::vector<double> bound(expected.out.data.size());
    for (size_t i = 0; i < bound.size(); ++i)
      bound[i] = expected.out.is_gap(i)
                     ? 0.0
                     : kEps * (2.2 * (c.W + 1) * 2 * mag.out.data[i] + 8 * std::fabs(expected.out.data[i])) + 1e-37;
    for_each_level([&] {
      ConvData run = input;
      causal_conv1d_silu(run.args());
      margin.add(expect_within("conv out", run.out.data, expected.out.data, bound));
      EXPECT_EQ(run.state, expected.state);  // the state is a copy of inputs: exact
    });
  }
}

struct ScanCase {
  int B;
  int64_t L, E, N;
  bool z, D, dt_bias;
};

// Inputs of one scan call in realistic ranges and laid out as the model has them: x and z side
// by side in in_proj's output, B and C inside x_proj's output after the dt columns.
struct ScanData {
  ScanCase c;
  Strided xz, dt, bc, y;
  std::vector<float> dt_bias, A, D, state;
  static constexpr int64_t kDtRank = 3;
  ScanData(Rng& rng, const ScanCase& c_)
      : c(c_), xz(c_.B * c_.L, 2 * c_.E, 2 * c_.E + 1), dt(c_.B * c_.L, c_.E, c_.E + 2),
        bc(c_.B * c_.L, kDtRank + 2 * c_.N, kDtRank + 2 * c_.N + 1), y(c_.B * c_.L, c_.E, c_.E + 1) {
    fill_normal(rng, 1.0, xz);
    fill_normal(rng, 1.0, bc);
    for (size_t i = 0; i < dt.data.size(); ++i)  // softplus inputs: mostly small dt, some past 20 and below -20
      if (!dt.is_gap(i)) dt.data[i] = i % 53 == 0 ? 25.0f : i % 47 == 0 ? -30.0f : float(-6 + 8 * rng.uniform());
    dt_bias = uniform(rng, size_t(c.E), -1, 1);
    for (int64_t i = 0; i < c.E * c.N; ++i) A.push_back(-float(1 + 15 * rng.uniform()));  // -exp(log(1..16))
    D = normal(rng, size_t(c.E), 1.0);
    state = normal(rng, size_t(c.B * c.E * c.N), 1.0);
  }
  ScanArgs args() {
    return {.batch = c.B, .length = c.L, .d_inner = c.E, .d_state = c.N, .x = xz.data.data(), .x_ld = xz.ld,
            .dt = dt.data.data(), .dt_ld = dt.ld, .dt_bias = c.dt_bias ? dt_bias.data() : nullptr, .A = A.data(),
            .Bm = bc.data.data() + kDtRank, .Cm = bc.data.data() + kDtRank + c.N, .bc_ld = bc.ld,
            .D = c.D ? D.data() : nullptr, .z = c.z ? xz.data.data() + c.E : nullptr, .z_ld = xz.ld,
            .state = state.data(), .y = y.data.data(), .y_ld = y.ld};
  }
  // |x|, |B|, |C|, |D|, |state|: the reference then gives sum |terms| of every h and y (the
  // decays and dt are positive and unchanged), up to the sign of silu(z).
  ScanData magnitudes() const {
    ScanData m = *this;
    for (int64_t r = 0; r < xz.rows; ++r)
      for (int64_t e = 0; e < c.E; ++e) m.xz.row(r)[e] = std::fabs(xz.data[r * xz.ld + e]);
    m.bc = abs_rows(bc);
    m.D = abs_of(D);
    m.state = abs_of(state);
    return m;
  }
};

TEST(OpsVsReference, SelectiveScan) {
  const ScanCase cases[] = {
      {1, 1, 1, 1, true, true, true},     {1, 2, 7, 16, true, true, true},    {2, 7, 8, 16, false, true, true},
      {3, 7, 9, 17, true, false, true},   {5, 1, 67, 16, true, true, false},  {1, 33, 20, 1, true, true, true},
      {2, 513, 24, 16, true, true, true}, {4, 2, 130, 17, true, true, true},  {1, 3, 1536, 16, true, true, true}};
  Margin margin{"scan"};
  Rng rng(5);
  for (const ScanCase& c : cases) {
    SCOPED_TRACE(cat("B ", c.B, " L ", c.L, " E ", c.E, " N ", c.N, c.z ? " z" : "", c.D ? " D" : "",
                     c.dt_bias ? " dt_bias" : ""));
    const ScanData input(rng, c);
    ScanData expected = input, mag = input.magnitudes();
    reference::selective_scan(expected.args());
    reference::selective_scan(mag.args());
    // Each step rounds h = decay h + dt B x within a few eps of sum |terms| (a decay off by
    // |dt A| eps relative moves h by at most e^-1 eps |h|), and old errors only decay, so after
    // L steps h is within c (L + 4) eps of its magnitude, c = 8 covering exp, softplus and the
    // roundings on both sides; y adds N products and the gate.
    const double L = double(c.L), N = double(c.N);
    std::vector<double> y_bound(expected.y.data.size()), h_bound(expected.state.size());
    for (size_t i = 0; i < y_bound.size(); ++i)
      y_bound[i] = expected.y.is_gap(i) ? 0.0 : 8 * kEps * (L + N + 4) * std::fabs(mag.y.data[i]) + 1e-30;
    for (size_t i = 0; i < h_bound.size(); ++i) h_bound[i] = 8 * kEps * (L + 4) * mag.state[i] + 1e-30;
    for_each_level([&] {
      ScanData run = input;
      selective_scan(run.args());
      margin.add(expect_within("scan y", run.y.data, expected.y.data, y_bound));
      margin.add(expect_within("scan state", run.state, expected.state, h_bound));
    });
  }
}

// ulp distance between two finite floats of any sign.
int64_t ulps(float a, float b) {
  auto ordered = [](float f) {
    int32_t i;
    std::memcpy(&i, &f, 4);
    return i < 0 ? int64_t(INT32_MIN) - i : int64_t(i);
  };
  return std::llabs(ordered(a) - ordered(b));
}

// One scan step with chosen inputs turns y into one of the vector functions of the fast kernel:
// exp(dt A), softplus(dt) or silu(z). Each is compared in ulps with the reference (libm).
TEST(OpsVsReference, ScanElementFunctionsInUlps) {
  const int64_t E = 4000;
  struct Probe {
    const char* name;
    double lo, hi;
    int64_t max_ulps;
  };
  for (const Probe& p : {Probe{"exp", -87.0, 0.0, 3}, Probe{"softplus", -30.0, 30.0, 4}, Probe{"silu", -80.0, 80.0, 5}}) {
    SCOPED_TRACE(p.name);
    std::vector<float> u(E);
    for (int64_t e = 0; e < E; ++e) u[e] = float(p.lo + (p.hi - p.lo) * double(e) / double(E - 1));
    const std::string f = p.name;
    // exp: dt = 32 exactly (softplus of 32 > 20), A = u / 32 (exact), h = 1, B = 0, C = 1 -> y = exp(u).
    // softplus: dt_in = u, h = 0, B = x = C = 1 -> y = dt. silu: B = 0, h = 0, D = x = 1, z = u.
    std::vector<float> x(E, 1.0f), dt(E, f == "exp" ? 32.0f : 0.0f), A(E, -1.0f), D(E, f == "silu" ? 1.0f : 0.0f);
    std::vector<float> z(E, 30.0f), h(E, f == "exp" ? 1.0f : 0.0f), bc = {f == "softplus" ? 1.0f : 0.0f, 1.0f};
    for (int64_t e = 0; e < E; ++e) {
      if (f == "exp") A[e] = u[e] / 32;
      if (f == "softplus") dt[e] = u[e];
      if (f == "silu") z[e] = u[e];
    }
    auto run = [&](bool reference_kernel) {
      std::vector<float> y(E), state = h;
      ScanArgs a{.batch = 1, .length = 1, .d_inner = E, .d_state = 1, .x = x.data(), .x_ld = E, .dt = dt.data(),
                 .dt_ld = E, .dt_bias = nullptr, .A = A.data(), .Bm = bc.data(), .Cm = bc.data() + 1, .bc_ld = 2,
                 .D = D.data(), .z = f == "silu" ? z.data() : nullptr, .z_ld = E, .state = state.data(),
                 .y = y.data(), .y_ld = E};
      if (reference_kernel) reference::selective_scan(a);
      else selective_scan(a);
      return y;
    };
    const std::vector<float> expected = run(true);
    for_each_level([&] {
      const std::vector<float> y = run(false);
      int64_t worst = 0;
      for (int64_t e = 0; e < E; ++e)
        if (ulps(y[e], expected[e]) > ulps(y[worst], expected[worst])) worst = e;
      std::printf("[ ulps     ] %s (%s): worst %lld ulps at %g\n", p.name, std::string(kernel_level()).c_str(),
                  (long long)ulps(y[worst], expected[worst]), u[worst]);
      EXPECT_LE(ulps(y[worst], expected[worst]), p.max_ulps)
          << "at input " << u[worst] << ": expected " << expected[worst] << ", actual " << y[worst];
    });
  }
}

// Runs conv then scan over `lengths` consecutive pieces of the B sequences in `whole` (length
// L), carrying both states from piece to piece; returns y as [B*L, E] rows of the whole.
std::vector<float> run_in_pieces(const ConvData& conv_whole, const ScanData& scan_whole, std::vector<int64_t> lengths,
                                 std::vector<float>& conv_state, std::vector<float>& ssm_state) {
  const int B = conv_whole.c.B;
  const int64_t L = conv_whole.c.L, E = conv_whole.c.E;
  std::vector<float> y(size_t(B * L * E));
  conv_state = conv_whole.state;
  ssm_state = scan_whole.state;
  int64_t start = 0;
  for (int64_t len : lengths) {
    ConvCase cc = conv_whole.c;
    cc.L = len;
    Rng unused(0);
    ConvData conv(unused, cc);
    ScanCase sc = scan_whole.c;
    sc.L = len;
    ScanData scan(unused, sc);
    conv.w = conv_whole.w, conv.bias = conv_whole.bias, conv.state = conv_state;
    scan.dt_bias = scan_whole.dt_bias, scan.A = scan_whole.A, scan.D = scan_whole.D, scan.state = ssm_state;
    auto copy_rows = [&](const Strided& from, Strided& to) {
      for (int b = 0; b < B; ++b)
        for (int64_t t = 0; t < len; ++t)
          std::memcpy(to.row(b * len + t), from.data.data() + (b * L + start + t) * from.ld, size_t(to.width) * 4);
    };
    copy_rows(conv_whole.x, conv.x);
    copy_rows(scan_whole.xz, scan.xz);
    copy_rows(scan_whole.dt, scan.dt);
    copy_rows(scan_whole.bc, scan.bc);
    causal_conv1d_silu(conv.args());
    // the scan's x is the conv output, as in the model
    for (int64_t r = 0; r < B * len; ++r) std::memcpy(scan.xz.row(r), conv.out.row(r), size_t(E) * 4);
    selective_scan(scan.args());
    for (int b = 0; b < B; ++b)
      for (int64_t t = 0; t < len; ++t)
        std::memcpy(y.data() + (b * L + start + t) * E, scan.y.row(b * len + t), size_t(E) * 4);
    conv_state = conv.state, ssm_state = scan.state;
    start += len;
  }
  return y;
}

// Splitting a chunk in pieces that carry the conv and SSM states (chunked prefill, or decode
// one token at a time) performs the same operations per channel in the same order, so it must
// give bit-identical outputs and final states.
TEST(OpsChunking, PiecesCarryingStateEqualOneRun) {
  const int B = 3;
  const int64_t L = 13, E = 37, N = 16;
  Rng rng(6);
  const ConvData conv(rng, {B, L, E, 4, true});
  const ScanData scan(rng, {B, L, E, N, true, true, true});
  for_each_level([&] {
    std::vector<float> conv_state, ssm_state;
    const std::vector<float> whole = run_in_pieces(conv, scan, {L}, conv_state, ssm_state);
    const std::vector<std::vector<int64_t>> splits = {{1, 12}, {5, 8}, {12, 1}, {2, 2, 9},
                                                      std::vector<int64_t>(size_t(L), 1)};
    for (const auto& split : splits) {
      SCOPED_TRACE(cat("pieces of ", split.size() == size_t(L) ? "1 token each" : cat(split[0], ", ", split[1], ", ...")));
      std::vector<float> conv_state_p, ssm_state_p;
      const std::vector<float> pieces = run_in_pieces(conv, scan, split, conv_state_p, ssm_state_p);
      EXPECT_EQ(pieces, whole);
      EXPECT_EQ(conv_state_p, conv_state);
      EXPECT_EQ(ssm_state_p, ssm_state);
    }
  });
}

}  // namespace
}  // namespace mambacpp::ops
