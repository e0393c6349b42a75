// Backward ops (ops.h, "Backward"):
// - the reference (ops/reference.h) against central finite differences of a double-precision
//   forward written here, for every gradient it returns;
// - the dispatched ops, at every kernel level this CPU runs, against the reference: odd sizes,
//   rows wider than the data (the gaps must stay untouched), accumulate on and off, null weights;
// - the fused lm_head cross-entropy against a naive full-logits computation in double;
// - targets outside the vocabulary, NaN and infinite logits, and results that repeat bit for bit
//   (and, where no sgemm is involved, do not depend on the number of threads).
//
// Tolerances. Finite differences: step 1e-4 in double on O(1) inputs errs by about 1e-9
// (truncation) + 1e-12 (rounding), and the fp32 reference on these small sums by a few 1e-7 of the
// gradient's scale; the bound 1e-4 (|fd| + mean |fd|) leaves a wide margin over both while any
// wrong term of a formula is off by O(1). Kernels against the reference (or against double): a
// bound per element from the magnitudes of the terms summed into it, 2 (n + c) eps sum |terms| for
// n terms (both sides round), as derived at each test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "ops/ops.h"
#include "ops/reference.h"
#include "ops_test_support.h"
#include "test_support.h"

namespace mambacpp::ops {
namespace {

using namespace testing;

constexpr double kEps = std::numeric_limits<float>::epsilon();  // 2^-23

// ---------------------------------------------------------------------------------------------
// Helpers



Strided random_rows(Rng& rng, int64_t rows, int64_t width, int64_t ld, double scale = 1.0) {
  Strided m(rows, width, ld);
  for (size_t i = 0; i < m.data.size(); ++i)
    if (!m.is_gap(i)) m.data[i] = float(rng.normal() * scale);
  return m;
}

std::vector<float> normal(Rng& rng, int64_t n, double scale = 1.0) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = float(rng.normal() * scale);
  return v;
}

std::vector<float> abs_of(std::vector<float> v) {
  for (float& f : v) f = std::fabs(f);
  return v;
}

Strided abs_of(Strided m) {  // gaps become 0, so bounds built from it are 0 there
  for (size_t i = 0; i < m.data.size(); ++i) m.data[i] = m.is_gap(i) ? 0.0f : std::fabs(m.data[i]);
  return m;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Every element within its bound; on failure names the worst one (largest error / bound).
// Returns the worst ratio, which the tests print as their margin.
double expect_within(const std::string& what, const std::vector<float>& actual, const std::vector<double>& expected,
                     const std::vector<double>& bound) {
  EXPECT_EQ(actual.size(), expected.size()) << what;
  EXPECT_EQ(bound.size(), expected.size()) << what;
  size_t worst = 0, failures = 0;
  double worst_ratio = -1;
  for (size_t i = 0; i < actual.size() && i < expected.size() && i < bound.size(); ++i) {
    const double err = std::fabs(double(actual[i]) - expected[i]);
    double ratio = bound[i] > 0 ? err / bound[i] : (err > 0 ? INFINITY : 0.0);
    if (err != err) ratio = INFINITY;
    failures += !(err <= bound[i]);
    if (ratio > worst_ratio) worst_ratio = ratio, worst = i;
  }
  if (actual.empty()) return 0;
  EXPECT_EQ(failures, 0u) << what << ": " << failures << " of " << actual.size()
                          << " elements out of bounds; worst at index " << worst << ": expected " << expected[worst]
                          << ", actual " << actual[worst] << ", bound " << bound[worst];
  return worst_ratio;
}
double expect_within(const std::string& what, const std::vector<float>& actual, const std::vector<float>& expected,
                     const std::vector<double>& bound) {
  return expect_within(what, actual, to_double(expected), bound);
}

// The largest error / bound a test saw, printed at its end to show the margin.
struct Margin {
  std::string name;
  double worst = 0;
  void add(double r) { worst = std::max(worst, r); }
  ~Margin() { std::printf("[ margin   ] %s: worst error / bound = %.3g\n", name.c_str(), worst); }
};

// Central differences of f with respect to each element of v (changed and restored in place).
std::vector<double> numeric_gradient(std::vector<double>& v, const std::function<double()>& f) {
  std::vector<double> g(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const double saved = v[i], step = 1e-4 * std::max(1.0, std::fabs(saved));
    v[i] = saved + step;
    const double up = f();
    v[i] = saved - step;
    const double down = f();
    v[i] = saved;
    g[i] = (up - down) / (2 * step);
  }
  return g;
}

double expect_matches_fd(const std::string& what, const std::vector<float>& analytic, const std::vector<double>& fd) {
  double mean_abs = 0;
  for (double g : fd) mean_abs += std::fabs(g) / double(fd.size());
  std::vector<double> bound(fd.size());
  for (size_t i = 0; i < fd.size(); ++i) bound[i] = 1e-4 * (std::fabs(fd[i]) + mean_abs);
  return expect_within(what, analytic, fd, bound);
}

double silu(double u) { return u / (1 + std::exp(-u)); }
double silu_grad(double u) {
  const double s = 1 / (1 + std::exp(-u));
  return s * (1 + u * (1 - s));
}

// Runs f with n OpenMP (and OpenBLAS) threads, then restores the count.
void with_threads(int n, const std::function<void()>& f) {
  const int original = num_threads();
  set_num_threads(n);
  f();
  set_num_threads(original);
}

// ---------------------------------------------------------------------------------------------
// Double-precision forwards, each reduced to sum(dout * output): its gradient is the backward's.

double embedding_loss(const std::vector<double>& table, const std::vector<int32_t>& ids, int64_t D,
                      const std::vector<float>& dout) {
  double sum = 0;
  for (size_t m = 0; m < ids.size(); ++m)
    for (int64_t d = 0; d < D; ++d) sum += dout[m * D + d] * table[ids[m] * D + d];
  return sum;
}

// weight empty: weightless
double rmsnorm_loss(const std::vector<double>& x, const std::vector<double>& weight, int64_t M, int64_t D, float eps,
                    const std::vector<float>& dy) {
  double sum = 0;
  for (int64_t m = 0; m < M; ++m) {
    double sum_sq = 0;
    for (int64_t d = 0; d < D; ++d) sum_sq += x[m * D + d] * x[m * D + d];
    const double r = 1 / std::sqrt(sum_sq / double(D) + double(eps));
    for (int64_t d = 0; d < D; ++d) sum += dy[m * D + d] * x[m * D + d] * r * (weight.empty() ? 1.0 : weight[d]);
  }
  return sum;
}

double linear_loss(const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>& bias,
                   int64_t M, int64_t K, int64_t O, const std::vector<float>& dy) {
  double sum = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t o = 0; o < O; ++o) {
      double y = bias[o];
      for (int64_t k = 0; k < K; ++k) y += x[m * K + k] * w[o * K + k];
      sum += dy[m * O + o] * y;
    }
  return sum;
}

struct ConvShape {
  int B;
  int64_t L, E;
  int W;
};

// x [B*L, E] compact, zero state before each sequence
double conv_loss(const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>& bias,
                 const ConvShape& s, const std::vector<float>& dout) {
  double sum = 0;
  for (int b = 0; b < s.B; ++b)
    for (int64_t t = 0; t < s.L; ++t)
      for (int64_t e = 0; e < s.E; ++e) {
        double u = bias[e];
        for (int k = 0; k < s.W; ++k) {
          const int64_t p = t - (s.W - 1) + k;
          if (p >= 0) u += w[e * s.W + k] * x[(b * s.L + p) * s.E + e];
        }
        sum += dout[(b * s.L + t) * s.E + e] * silu(u);
      }
  return sum;
}

// Sum over rows with a target >= 0 of -log softmax(h W^T) at the target.
double cross_entropy_loss(const std::vector<double>& h, const std::vector<double>& w, int64_t V, int64_t D,
                          const std::vector<int32_t>& targets) {
  double sum = 0;
  std::vector<double> logits(static_cast<size_t>(V));
  for (size_t m = 0; m < targets.size(); ++m) {
    if (targets[m] < 0) continue;
    for (int64_t j = 0; j < V; ++j) {
      logits[j] = 0;
      for (int64_t d = 0; d < D; ++d) logits[j] += h[m * D + d] * w[j * D + d];
    }
    const double max = *std::max_element(logits.begin(), logits.end());
    double sum_exp = 0;
    for (double l : logits) sum_exp += std::exp(l - max);
    sum += max + std::log(sum_exp) - logits[targets[m]];
  }
  return sum;
}

// ---------------------------------------------------------------------------------------------
// The reference against finite differences

TEST(OpsBackwardFiniteDifferences, Embedding) {
  Margin margin{"embedding vs finite differences"};
  Rng rng(11);
  const int64_t V = 5, D = 3;
  const std::vector<int32_t> ids = {4, 0, 4, 2, 4};
  const std::vector<float> table = normal(rng, V * D), dout = normal(rng, int64_t(ids.size()) * D);
  std::vector<float> dtable(table.size(), 0.0f);
  reference::embedding_backward(ids.data(), int64_t(ids.size()), dout.data(), D, D, dtable.data());
  std::vector<double> t = to_double(table);
  margin.add(expect_matches_fd("dtable", dtable, numeric_gradient(t, [&] { return embedding_loss(t, ids, D, dout); })));
}

TEST(OpsBackwardFiniteDifferences, Rmsnorm) {
  Margin margin{"rmsnorm vs finite differences"};
  Rng rng(12);
  const int64_t M = 3, D = 7;
  const float eps = 0.1f;  // large enough that its term in the gradient is checked too
  for (bool weighted : {true, false}) {
    SCOPED_TRACE(weighted ? "weighted" : "weightless");
    const std::vector<float> x = normal(rng, M * D), w = normal(rng, D), dy = normal(rng, M * D);
    std::vector<float> dx(size_t(M * D)), dw(size_t(D), 0.0f);
    reference::rmsnorm_backward(x.data(), D, M, D, weighted ? w.data() : nullptr, eps, dy.data(), D, dx.data(), D,
                                false, weighted ? dw.data() : nullptr);
    std::vector<double> xd = to_double(x), wd = weighted ? to_double(w) : std::vector<double>{};
    auto loss = [&] { return rmsnorm_loss(xd, wd, M, D, eps, dy); };
    margin.add(expect_matches_fd("dx", dx, numeric_gradient(xd, loss)));
    if (weighted) margin.add(expect_matches_fd("dweight", dw, numeric_gradient(wd, loss)));
  }
}

TEST(OpsBackwardFiniteDifferences, Linear) {
  Margin margin{"linear vs finite differences"};
  Rng rng(13);
  const int64_t M = 4, K = 5, O = 3;
  const std::vector<float> x = normal(rng, M * K), w = normal(rng, O * K), bias = normal(rng, O),
                           dy = normal(rng, M * O);
  std::vector<float> dx(size_t(M * K)), dw(size_t(O * K), 0.0f), dbias(size_t(O), 0.0f);
  reference::linear_backward(x.data(), K, M, Weight{w.data(), DType::F32, O, K}, dy.data(), O, dx.data(), K, false,
                             dw.data(), dbias.data());
  std::vector<double> xd = to_double(x), wd = to_double(w), bd = to_double(bias);
  auto loss = [&] { return linear_loss(xd, wd, bd, M, K, O, dy); };
  margin.add(expect_matches_fd("dx", dx, numeric_gradient(xd, loss)));
  margin.add(expect_matches_fd("dw", dw, numeric_gradient(wd, loss)));
  margin.add(expect_matches_fd("dbias", dbias, numeric_gradient(bd, loss)));
}

TEST(OpsBackwardFiniteDifferences, CausalConv1dSilu) {
  Margin margin{"conv vs finite differences"};
  Rng rng(14);
  for (const ConvShape s : {ConvShape{2, 6, 3, 4}, ConvShape{1, 2, 2, 4}, ConvShape{2, 3, 2, 1}}) {
    SCOPED_TRACE(cat("B ", s.B, " L ", s.L, " E ", s.E, " W ", s.W));
    const std::vector<float> x = normal(rng, s.B * s.L * s.E), w = normal(rng, s.E * s.W, 0.7),
                             bias = normal(rng, s.E, 0.5), dout = normal(rng, s.B * s.L * s.E);
    std::vector<float> dx(x.size()), dw(w.size(), 0.0f), dbias(bias.size(), 0.0f);
    ConvBackwardArgs a{.forward = {.batch = s.B, .length = s.L, .channels = s.E, .width = s.W, .x = x.data(),
                                   .x_ld = s.E, .weight = w.data(), .bias = bias.data()},
                       .dout = dout.data(), .dout_ld = s.E, .dx = dx.data(), .dx_ld = s.E, .dweight = dw.data(),
                       .dbias = dbias.data()};
    reference::causal_conv1d_silu_backward(a);
    std::vector<double> xd = to_double(x), wd = to_double(w), bd = to_double(bias);
    auto loss = [&] { return conv_loss(xd, wd, bd, s, dout); };
    margin.add(expect_matches_fd("dx", dx, numeric_gradient(xd, loss)));
    margin.add(expect_matches_fd("dweight", dw, numeric_gradient(wd, loss)));
    margin.add(expect_matches_fd("dbias", dbias, numeric_gradient(bd, loss)));
  }
}

TEST(OpsBackwardFiniteDifferences, LmHeadCrossEntropy) {
  Margin margin{"cross-entropy vs finite differences"};
  Rng rng(15);
  const int64_t M = 5, V = 7, D = 4;
  const float grad_scale = 0.5f;
  const std::vector<int32_t> targets = {3, -1, 0, 6, 3};
  const std::vector<float> h = normal(rng, M * D), w = normal(rng, V * D);
  std::vector<float> dh(size_t(M * D)), dw(size_t(V * D), 0.0f);
  const double loss = reference::lm_head_cross_entropy(h.data(), D, M, Weight{w.data(), DType::F32, V, D},
                                                       targets.data(), grad_scale, dh.data(), D, dw.data(), nullptr);
  std::vector<double> hd = to_double(h), wd = to_double(w);
  auto scaled_loss = [&] { return grad_scale * cross_entropy_loss(hd, wd, V, D, targets); };
  EXPECT_NEAR(loss, cross_entropy_loss(hd, wd, V, D, targets), 1e-5);
  margin.add(expect_matches_fd("dh", dh, numeric_gradient(hd, scaled_loss)));
  margin.add(expect_matches_fd("dw", dw, numeric_gradient(wd, scaled_loss)));
  for (int64_t d = 0; d < D; ++d) EXPECT_EQ(dh[1 * D + d], 0.0f) << "the ignored row has no gradient";
}

// ---------------------------------------------------------------------------------------------
// Kernels against the reference

TEST(OpsBackwardVsReference, Embedding) {
  // Strided added in the same order on both sides: exact.
  Rng rng(21);
  for (int64_t D : {1, 7, 33, 400}) {
    SCOPED_TRACE(cat("D ", D));
    const int64_t V = 13;
    std::vector<int32_t> ids;
    for (int i = 0; i < 120; ++i) ids.push_back(int32_t(rng.below(i % 3 ? V : 3)));  // many repeats
    const int64_t M = int64_t(ids.size());
    const Strided dout = random_rows(rng, M, D, D + 3);
    const std::vector<float> table0 = normal(rng, V * D);
    std::vector<float> expected = table0;
    reference::embedding_backward(ids.data(), M, dout.ptr(), dout.ld, D, expected.data());
    for_each_level([&] {
      for (int threads : {1, 2}) {
        std::vector<float> dtable = table0;
        with_threads(threads, [&] { embedding_backward(ids.data(), M, dout.ptr(), dout.ld, D, dtable.data()); });
        EXPECT_EQ(dtable, expected) << threads << " threads";
      }
    });
  }
}

// rmsnorm: with r = 1/rms(x), xhat = x r, g = dy w, each side's r is within (D/2 + 3) eps relative and
// mean(g xhat) within (3D/2 + 5) eps of r mean|g x|, so dx = r (g - xhat mean(g xhat)) is within
// 4 (D + 8) eps r (|g| + |xhat| mean|g xhat|) of the other side's (plus 2 eps |dx| for +=);
// dweight = sum over M rows of dy xhat within 2 (M + D + 8) eps sum |dy xhat| (plus, as the rows may be
// added onto dweight one at a time, 2 (M + 2) eps |dweight0| + 2 eps |dweight|).
struct RmsnormBounds {
  std::vector<double> dx, dweight;
};
RmsnormBounds rmsnorm_bounds(const Strided& x, const Strided& dy, const float* w, float eps, const Strided& dx_expected,
                             const std::vector<float>& dw0, const std::vector<float>& dw_expected) {
  const int64_t M = x.rows, D = x.width;
  RmsnormBounds b{std::vector<double>(dx_expected.data.size(), 0.0), std::vector<double>(size_t(D), 0.0)};
  for (int64_t m = 0; m < M; ++m) {
    double sum_sq = 0, mean_abs_g_xhat = 0;
    for (int64_t d = 0; d < D; ++d) sum_sq += double(x.at(m, d)) * x.at(m, d);
    const double r = 1 / std::sqrt(sum_sq / double(D) + eps);
    auto g = [&](int64_t d) { return double(dy.at(m, d)) * (w ? w[d] : 1.0f); };
    for (int64_t d = 0; d < D; ++d) mean_abs_g_xhat += std::fabs(g(d) * x.at(m, d) * r) / double(D);
    for (int64_t d = 0; d < D; ++d) {
      const double xhat = std::fabs(x.at(m, d) * r);
      b.dx[size_t(m * dx_expected.ld + d)] = 4 * double(D + 8) * kEps * r * (std::fabs(g(d)) + xhat * mean_abs_g_xhat) +
                                             2 * kEps * std::fabs(dx_expected.at(m, d));
      b.dweight[size_t(d)] += 2 * double(M + D + 8) * kEps * std::fabs(dy.at(m, d) * xhat);
    }
  }
  for (int64_t d = 0; d < D; ++d)
    b.dweight[size_t(d)] +=
        2 * double(M + 2) * kEps * std::fabs(dw0[size_t(d)]) + 2 * kEps * std::fabs(dw_expected[size_t(d)]);
  return b;
}

TEST(OpsBackwardVsReference, Rmsnorm) {
  Margin margin{"rmsnorm backward"};
  Rng rng(22);
  const float eps = 1e-5f;
  for (int64_t D : {1, 7, 8, 33, 520})
    for (int64_t M : {1, 3, 70})
      for (bool weighted : {true, false})
        for (bool accumulate : {false, true}) {
          SCOPED_TRACE(cat("D ", D, " M ", M, weighted ? " weighted" : " weightless", accumulate ? " +=" : " ="));
          const Strided x = random_rows(rng, M, D, D + 1, 2.0), dy = random_rows(rng, M, D, D + 2);
          const Strided dx0 = random_rows(rng, M, D, D + 3);  // to be overwritten unless +=
          const std::vector<float> w = normal(rng, D), dw0 = normal(rng, D);
          const float* wp = weighted ? w.data() : nullptr;
          Strided expected_dx = dx0;
          std::vector<float> expected_dw = dw0;
          reference::rmsnorm_backward(x.ptr(), x.ld, M, D, wp, eps, dy.ptr(), dy.ld, expected_dx.ptr(), expected_dx.ld,
                                      accumulate, weighted ? expected_dw.data() : nullptr);
          const RmsnormBounds bound = rmsnorm_bounds(x, dy, wp, eps, expected_dx, dw0, expected_dw);
          for_each_level([&] {
            for (int threads : {1, 2}) {
              Strided dx = dx0;
              std::vector<float> dw = dw0;
              with_threads(threads, [&] {
                rmsnorm_backward(x.ptr(), x.ld, M, D, wp, eps, dy.ptr(), dy.ld, dx.ptr(), dx.ld, accumulate,
                                 weighted ? dw.data() : nullptr);
              });
              margin.add(expect_within("dx", dx.data, expected_dx.data, bound.dx));
              margin.add(expect_within("dweight", dw, expected_dw, bound.dweight));
            }
          });
        }
}

// linear: every output is a sum of n products (n = O for dx, M for dw and dbias) plus the value
// it accumulates onto; the reference run on absolute values gives sum |terms|, and the two sides
// differ by at most 2 (n + 2) eps times that.
TEST(OpsBackwardVsReference, Linear) {
  struct Case {
    int64_t M, K, O;
  };
  const Case cases[] = {{1, 1, 1}, {3, 7, 5}, {17, 33, 13}, {64, 100, 50}, {130, 24, 33}, {2, 300, 1}};
  Margin margin{"linear backward"};
  Rng rng(23);
  for (const Case& c : cases)
    for (bool accumulate : {false, true})
      for (bool with_bias : {false, true})
        for (bool with_dx : {true, false}) {
          SCOPED_TRACE(cat("M ", c.M, " K ", c.K, " O ", c.O, accumulate ? " +=" : " =", with_bias ? " bias" : "",
                           with_dx ? "" : " no dx"));
          const Strided x = random_rows(rng, c.M, c.K, c.K + 3), dy = random_rows(rng, c.M, c.O, c.O + 2);
          const Strided dx0 = random_rows(rng, c.M, c.K, c.K + 1);  // to be overwritten unless +=
          const std::vector<float> w = normal(rng, c.O * c.K, 0.3), dw0 = normal(rng, c.O * c.K),
                                   db0 = normal(rng, c.O);
          const Weight weight{w.data(), DType::F32, c.O, c.K};
          auto run = [&](auto backward, const Strided& x_, const Weight& w_, const Strided& dy_, Strided& dx,
                         std::vector<float>& dw, std::vector<float>& db) {
            backward(x_.ptr(), x_.ld, c.M, w_, dy_.ptr(), dy_.ld, with_dx ? dx.ptr() : nullptr, dx.ld, accumulate,
                     dw.data(), with_bias ? db.data() : nullptr);
          };
          Strided expected_dx = dx0, mag_dx = abs_of(dx0);
          std::vector<float> expected_dw = dw0, expected_db = db0, mag_dw = abs_of(dw0), mag_db = abs_of(db0);
          run(reference::linear_backward, x, weight, dy, expected_dx, expected_dw, expected_db);
          const std::vector<float> w_abs = abs_of(w);
          run(reference::linear_backward, abs_of(x), Weight{w_abs.data(), DType::F32, c.O, c.K}, abs_of(dy), mag_dx,
              mag_dw, mag_db);
          auto bound = [](const std::vector<float>& mag, int64_t n) {
            std::vector<double> b(mag.size());
            for (size_t i = 0; i < b.size(); ++i) b[i] = 2 * double(n + 2) * kEps * mag[i];
            return b;
          };
          for_each_level([&] {
            Strided dx = dx0;
            std::vector<float> dw = dw0, db = db0;
            run(linear_backward, x, weight, dy, dx, dw, db);
            margin.add(expect_within("dx", dx.data, expected_dx.data, bound(mag_dx.data, c.O)));
            margin.add(expect_within("dw", dw, expected_dw, bound(mag_dw, c.M)));
            margin.add(expect_within("dbias", db, expected_db, bound(mag_db, c.M)));
          });
        }
}

struct ConvCase {
  int B;
  int64_t L, E;
  int W;
  bool bias, dweight, dbias;
};

// Inputs of one conv backward call laid out as the model has them: x inside in_proj's wider output.
struct ConvData {
  ConvCase c;
  Strided x, dout, dx;
  std::vector<float> w, bias, dw, db;
  ConvData(Rng& rng, const ConvCase& c_)
      : c(c_),
        x(random_rows(rng, c_.B * c_.L, c_.E, 2 * c_.E + 3)),
        dout(random_rows(rng, c_.B * c_.L, c_.E, c_.E + 1)),
        dx(c_.B * c_.L, c_.E, c_.E + 2), w(normal(rng, c_.E * c_.W, 0.5)), bias(normal(rng, c_.E, 0.5)),
        dw(normal(rng, c_.E * c_.W)), db(normal(rng, c_.E)) {}
  ConvBackwardArgs args() {
    return {.forward = {.batch = c.B, .length = c.L, .channels = c.E, .width = c.W, .x = x.ptr(), .x_ld = x.ld,
                        .weight = w.data(), .bias = c.bias ? bias.data() : nullptr},
            .dout = dout.ptr(), .dout_ld = dout.ld, .dx = dx.ptr(), .dx_ld = dx.ld,
            .dweight = c.dweight ? dw.data() : nullptr, .dbias = c.dbias ? db.data() : nullptr};
  }
};

// conv: each side computes u = bias + sum of W products within (W + 1) eps m_u, m_u = |bias| +
// sum |w x|, and silu'(u) = s (1 + u (1 - s)) within about 5 (1 + |u|) eps; |silu''| <= 1/2, so the
// two sides' dpre = dout silu'(u) differ by at most eps P, P = |dout| ((W + 1) m_u + 10 (1 + |u|)) +
// 2 |dpre|. dx sums W products w dpre, dweight and dbias L per sequence plus B sequences:
//   |d dx| <= sum_k |w| (eps P + 2 W eps |dpre|), |d dweight| <= sum_t |x| (eps P + 2 (L + B + 2) eps |dpre|),
// dbias the same without |x|; each plus eps (2 (L + B + 2) |start| + 2 |result|) for the value accumulated
// onto (the reference adds every token's term to it in turn).
struct ConvBounds {
  std::vector<double> dx, dweight, dbias;
};
ConvBounds conv_bounds(const ConvData& in, const ConvData& expected) {
  const ConvCase& c = in.c;
  ConvBounds b{std::vector<double>(in.dx.data.size(), 0.0), std::vector<double>(in.w.size(), 0.0),
               std::vector<double>(in.bias.size(), 0.0)};
  const double n_sum = 2 * double(c.L + c.B + 2);
  for (int bb = 0; bb < c.B; ++bb)
    for (int64_t e = 0; e < c.E; ++e)
      for (int64_t t = 0; t < c.L; ++t) {
        const int64_t row = bb * c.L + t;
        auto input = [&](int64_t p) { return p < 0 ? 0.0 : double(in.x.at(bb * c.L + p, e)); };
        double u = c.bias ? in.bias[e] : 0.0, m_u = c.bias ? std::fabs(in.bias[e]) : 0.0;
        for (int k = 0; k < c.W; ++k) {
          u += in.w[e * c.W + k] * input(t - (c.W - 1) + k);
          m_u += std::fabs(in.w[e * c.W + k] * input(t - (c.W - 1) + k));
        }
        const double dout = std::fabs(in.dout.at(row, e)), dpre = dout * std::fabs(silu_grad(u));
        const double P = dout * ((c.W + 1) * m_u + 10 * (1 + std::fabs(u))) + 2 * dpre;
        for (int k = 0; k < c.W; ++k) {
          const int64_t p = t - (c.W - 1) + k;
          if (p >= 0)
            b.dx[size_t((bb * c.L + p) * in.dx.ld + e)] += std::fabs(in.w[e * c.W + k]) * kEps * (P + 2 * c.W * dpre);
          b.dweight[e * c.W + k] += std::fabs(input(p)) * kEps * (P + n_sum * dpre);
        }
        b.dbias[e] += kEps * (P + n_sum * dpre);
      }
  for (size_t i = 0; i < b.dweight.size(); ++i)
    b.dweight[i] += kEps * (n_sum * std::fabs(in.dw[i]) + 2 * std::fabs(expected.dw[i]));
  for (size_t i = 0; i < b.dbias.size(); ++i)
    b.dbias[i] += kEps * (n_sum * std::fabs(in.db[i]) + 2 * std::fabs(expected.db[i]));
  return b;
}

TEST(OpsBackwardVsReference, CausalConv1dSilu) {
  const ConvCase cases[] = {{1, 1, 1, 4, true, true, true},    {1, 2, 7, 4, false, true, true},
                            {2, 3, 8, 4, true, true, true},    {3, 7, 9, 2, true, true, false},
                            {5, 1, 67, 4, true, true, true},   {1, 513, 24, 4, true, true, true},
                            {4, 2, 130, 5, false, false, true}, {2, 5, 16, 1, true, true, true},
                            {3, 40, 136, 4, true, true, true},  {2, 9, 72, 3, true, false, false}};
  Margin margin{"conv backward"};
  Rng rng(24);
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(cat("B ", c.B, " L ", c.L, " E ", c.E, " W ", c.W, c.bias ? " bias" : " no bias",
                     c.dweight ? " dweight" : "", c.dbias ? " dbias" : ""));
    const ConvData input(rng, c);
    ConvData expected = input;
    reference::causal_conv1d_silu_backward(expected.args());
    const ConvBounds bound = conv_bounds(input, expected);
    for_each_level([&] {
      std::vector<float> first_dx;
      for (int threads : {1, 2}) {
        ConvData run = input;
        with_threads(threads, [&] { causal_conv1d_silu_backward(run.args()); });
        margin.add(expect_within("dx", run.dx.data, expected.dx.data, bound.dx));
        margin.add(expect_within("dweight", run.dw, expected.dw, bound.dweight));
        margin.add(expect_within("dbias", run.db, expected.db, bound.dbias));
        if (threads == 1) first_dx = run.dx.data;
        else EXPECT_EQ(run.dx.data, first_dx) << "dx depends on the thread count";
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// lm_head cross-entropy against full logits in double

struct CrossEntropyCase {
  int64_t M, V, D, h_ld, dh_ld;
  float grad_scale;
};

// Inputs: h [M, D] at h_ld, w [V, D], targets (every 7th ignored), dw's starting value.
struct CrossEntropyData {
  CrossEntropyCase c;
  Strided h;
  std::vector<float> w, dw0;
  std::vector<int32_t> targets;
  CrossEntropyData(Rng& rng, const CrossEntropyCase& c_)
      : c(c_), h(random_rows(rng, c_.M, c_.D, c_.h_ld)), w(normal(rng, c_.V * c_.D, 0.5)),
        dw0(normal(rng, c_.V * c_.D)) {
    for (int64_t m = 0; m < c.M; ++m) targets.push_back(m % 7 == 3 ? -1 : int32_t(rng.below(uint64_t(c.V))));
  }
  Weight weight() const { return {w.data(), DType::F32, c.V, c.D}; }
};

// The loss, dh and dw in double, with bounds for an fp32 computation. Per row, fp32 logits are
// within Δ = 2 (D + 2) eps max_j sum_d |h w| of the exact ones; softmax p_j then within relative
// ρ = 2 Δ + 8 eps (spread + 1) (spread = max - min logit: the exp arguments' rounding), the loss
// within 2 Δ + 8 eps (|lse| + |l_t| + spread + 1), and dlogit_j = s (p_j - [j = t]) within
// δ_j = s (ρ p_j + eps [j = t]). dh sums V terms, dw M: |Δ dh| <= sum_j |w_jd| (δ_j + 2 (V + 2) eps |dlogit_j|),
// |Δ dw| <= sum_m |h_md| (δ_mj + 2 (M + 2) eps |dlogit_mj|) + 2 (M + 2) eps |dw0| + 2 eps |dw| (the
// reference adds each row onto dw0 in turn, so up to M roundings of a value as large as dw0).
struct CrossEntropyExpected {
  double loss = 0, loss_bound = 0;
  std::vector<double> dh, dh_bound, dw, dw_bound;  // dh at dh_ld, kPad in the gaps (bound 0)
};
CrossEntropyExpected naive_cross_entropy(const CrossEntropyData& in) {
  const CrossEntropyCase& c = in.c;
  const double s = c.grad_scale;
  CrossEntropyExpected x;
  x.dh.assign(size_t(c.M * c.dh_ld), kPad);
  x.dh_bound.assign(x.dh.size(), 0.0);
  x.dw = to_double(in.dw0);
  x.dw_bound.assign(x.dw.size(), 0.0);
  std::vector<double> logits(size_t(c.V)), dlogit(size_t(c.V)), delta(size_t(c.V));
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t d = 0; d < c.D; ++d) x.dh[size_t(m * c.dh_ld + d)] = 0.0;
    const int32_t t = in.targets[size_t(m)];
    if (t < 0) continue;
    double max_abs_sum = 0;
    for (int64_t j = 0; j < c.V; ++j) {
      double l = 0, abs_sum = 0;
      for (int64_t d = 0; d < c.D; ++d) {
        l += double(in.h.at(m, d)) * in.w[j * c.D + d];
        abs_sum += std::fabs(double(in.h.at(m, d)) * in.w[j * c.D + d]);
      }
      logits[j] = l, max_abs_sum = std::max(max_abs_sum, abs_sum);
    }
    const double max = *std::max_element(logits.begin(), logits.end());
    const double spread = max - *std::min_element(logits.begin(), logits.end());
    double sum_exp = 0;
    for (double l : logits) sum_exp += std::exp(l - max);
    const double lse = max + std::log(sum_exp);
    const double Delta = 2 * double(c.D + 2) * kEps * max_abs_sum, rho = 2 * Delta + 8 * kEps * (spread + 1);
    x.loss += lse - logits[t];
    x.loss_bound += 2 * Delta + 8 * kEps * (std::fabs(lse) + std::fabs(logits[t]) + spread + 1);
    for (int64_t j = 0; j < c.V; ++j) {
      const double p = std::exp(logits[j] - lse);
      dlogit[j] = s * (p - (j == t ? 1.0 : 0.0));
      delta[j] = s * (rho * p + (j == t ? kEps : 0.0));
    }
    for (int64_t j = 0; j < c.V; ++j)
      for (int64_t d = 0; d < c.D; ++d) {
        const double w = in.w[j * c.D + d], h = in.h.at(m, d);
        x.dh[size_t(m * c.dh_ld + d)] += dlogit[j] * w;
        x.dh_bound[size_t(m * c.dh_ld + d)] +=
            std::fabs(w) * (delta[j] + 2 * double(c.V + 2) * kEps * std::fabs(dlogit[j]));
        x.dw[size_t(j * c.D + d)] += dlogit[j] * h;
        x.dw_bound[size_t(j * c.D + d)] +=
            std::fabs(h) * (delta[j] + 2 * double(c.M + 2) * kEps * std::fabs(dlogit[j]));
      }
  }
  for (size_t i = 0; i < x.dw.size(); ++i)
    x.dw_bound[i] += 2 * double(c.M + 2) * kEps * std::fabs(in.dw0[i]) + 2 * kEps * std::fabs(x.dw[i]);
  return x;
}

TEST(OpsBackwardCrossEntropy, AgainstFullLogitsInDouble) {
  // M crosses kCrossEntropyRows twice and ends in a partial block.
  const CrossEntropyCase cases[] = {
      {1, 3, 2, 2, 2, 1.0f}, {37, 50, 9, 11, 10, 0.25f}, {520, 160, 24, 27, 25, 1.0f / 512}};
  Margin margin{"lm_head cross-entropy"};
  Rng rng(31);
  for (const CrossEntropyCase& c : cases) {
    SCOPED_TRACE(cat("M ", c.M, " V ", c.V, " D ", c.D));
    const CrossEntropyData in(rng, c);
    const CrossEntropyExpected expected = naive_cross_entropy(in);
    std::vector<float> scratch(size_t(cross_entropy_scratch_floats(in.weight())));
    auto check = [&](auto cross_entropy) {
      Strided dh(c.M, c.D, c.dh_ld);
      std::vector<float> dw = in.dw0;
      const double loss = cross_entropy(in.h.ptr(), c.h_ld, c.M, in.weight(), in.targets.data(), c.grad_scale, dh.ptr(),
                                        c.dh_ld, dw.data(), scratch.data());
      const double loss_error = std::fabs(loss - expected.loss);
      EXPECT_LE(loss_error, expected.loss_bound) << "loss: expected " << expected.loss << ", actual " << loss;
      margin.add(loss_error / expected.loss_bound);
      margin.add(expect_within("dh", dh.data, expected.dh, expected.dh_bound));
      margin.add(expect_within("dw", dw, expected.dw, expected.dw_bound));
      const double loss_only = cross_entropy(in.h.ptr(), c.h_ld, c.M, in.weight(), in.targets.data(), c.grad_scale,
                                             nullptr, 0, nullptr, scratch.data());
      EXPECT_EQ(loss_only, loss) << "the loss does not depend on whether gradients are asked for";
    };
    {
      SCOPED_TRACE("reference");
      check(reference::lm_head_cross_entropy);
    }
    for_each_level([&] { check(lm_head_cross_entropy); });
  }
}

TEST(OpsBackwardCrossEntropy, TargetOutsideVocabularyIsRejectedBeforeAnyWrite) {
  Rng rng(32);
  const CrossEntropyData in(rng, {300, 20, 4, 4, 4, 1.0f});
  std::vector<int32_t> targets = in.targets;
  targets[290] = 20;  // == V, in the second block: the first must not have been added to dw
  std::vector<float> scratch(size_t(cross_entropy_scratch_floats(in.weight()))), dh(300 * 4), dw = in.dw0;
  testing::expect_bad_input(
      [&] {
        lm_head_cross_entropy(in.h.ptr(), 4, 300, in.weight(), targets.data(), 1.0f, dh.data(), 4, dw.data(),
                              scratch.data());
      },
      {"target", "20", "row 290", "vocabulary size 20"});
  EXPECT_EQ(dw, in.dw0);
}

// A NaN or +inf logit (here every row's logit 2, never a target) must not vanish in the max or
// the exp: the loss and every gradient come out NaN, so that training can skip the step.
TEST(OpsBackwardCrossEntropy, NonFiniteLogitsGiveNan) {
  Rng rng(33);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    SCOPED_TRACE(cat("weight row of ", bad));
    CrossEntropyData in(rng, {21, 13, 5, 5, 5, 1.0f});
    in.h = abs_of(in.h);  // positive h: an infinite weight row gives +inf logits
    for (int32_t& t : in.targets) t = t == 2 ? 3 : t;
    for (int64_t d = 0; d < 5; ++d) in.w[2 * 5 + d] = bad;
    std::vector<float> scratch(size_t(cross_entropy_scratch_floats(in.weight())));
    for_each_level([&] {
      std::vector<float> dh(21 * 5), dw = in.dw0;
      const double loss = lm_head_cross_entropy(in.h.ptr(), 5, 21, in.weight(), in.targets.data(), 1.0f, dh.data(),
                                                5, dw.data(), scratch.data());
      EXPECT_TRUE(std::isnan(loss)) << loss;
      EXPECT_TRUE(std::all_of(dh.begin(), dh.begin() + 5, [](float v) { return std::isnan(v); })) << "dh row 0";
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Repeat calls give bit-identical results

TEST(OpsBackwardDeterminism, RepeatCallsAreBitIdentical) {
  Rng rng(41);
  const int64_t M = 300, D = 130, O = 70;
  const Strided x = random_rows(rng, M, D, D + 1), dy = random_rows(rng, M, O, O), dyn = random_rows(rng, M, D, D);
  const std::vector<float> w = normal(rng, O * D, 0.3), norm_w = normal(rng, D);
  std::vector<int32_t> ids;
  for (int64_t m = 0; m < M; ++m) ids.push_back(int32_t(rng.below(9)));
  ConvData conv(rng, {3, 100, 136, 4, true, true, true});
  const CrossEntropyData ce(rng, {300, 257, 33, 33, 33, 0.5f});
  std::vector<float> scratch(size_t(cross_entropy_scratch_floats(ce.weight())));
  // Every output of every op, from zeroed buffers.
  auto run_all = [&] {
    std::vector<std::vector<float>> out;
    std::vector<float> dtable(size_t(9 * D), 0.0f), dx(size_t(M * D)), dwn(size_t(D), 0.0f), dxl(size_t(M * D)),
        dwl(size_t(O * D), 0.0f), dbl(size_t(O), 0.0f), dh(size_t(300 * 33)), dwh(size_t(257 * 33), 0.0f);
    embedding_backward(ids.data(), M, dyn.ptr(), D, D, dtable.data());
    rmsnorm_backward(x.ptr(), x.ld, M, D, norm_w.data(), 1e-5f, dyn.ptr(), D, dx.data(), D, false, dwn.data());
    linear_backward(x.ptr(), x.ld, M, Weight{w.data(), DType::F32, O, D}, dy.ptr(), O, dxl.data(), D, false, dwl.data(),
                    dbl.data());
    ConvData c = conv;
    causal_conv1d_silu_backward(c.args());
    const double loss = lm_head_cross_entropy(ce.h.ptr(), 33, 300, ce.weight(), ce.targets.data(), 0.5f, dh.data(), 33,
                                              dwh.data(), scratch.data());
    return std::vector<std::vector<float>>{dtable, dx, dwn, dxl, dwl, dbl, c.dx.data, c.dw, c.db, dh, dwh,
                                           {float(loss), float(loss - double(float(loss)))}};
  };
  for_each_level([&] {
    const auto first = run_all();
    for (int repeat = 0; repeat < 2; ++repeat) EXPECT_EQ(run_all(), first) << "repeat " << repeat;
  });
}

}  // namespace
}  // namespace mambacpp::ops
