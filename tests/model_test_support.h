// Helpers shared by the model tests (beside test_support.h): id conversion, worst-element
// comparisons that print "PARITY <check> max_abs_diff=<x>" lines (the figures the notes quote),
// argmax and the next-token loss.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "test_support.h"

namespace mambacpp::testing {

// True in sanitizer builds, where long tests run shorter.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

inline std::vector<int32_t> to_ids(const Tensor& t) {
  std::vector<int32_t> ids(size_t(t.numel()));
  const int64_t* p = t.data<int64_t>();
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(p[i]);
  return ids;
}

struct Worst {
  double diff = 0;  // max |expected - actual| (NaN counts as infinite)
  int64_t index = -1;
  double expected = 0, actual = 0;
};

template <class A, class B>
Worst worst_abs_diff(const A* expected, const B* actual, int64_t n) {
  Worst w;
  for (int64_t i = 0; i < n; ++i) {
    double d = std::fabs(double(expected[i]) - double(actual[i]));
    if (std::isnan(d)) d = INFINITY;
    if (d > w.diff || w.index < 0) w = {d, i, double(expected[i]), double(actual[i])};
  }
  return w;
}

// Prints the check's figure and expects it within `tol`, naming the worst element if not.
template <class A, class B>
Worst expect_parity(const std::string& check, const A* expected, const B* actual, int64_t n, double tol) {
  const Worst w = worst_abs_diff(expected, actual, n);
  std::printf("PARITY %s max_abs_diff=%.3g (tolerance %.3g)\n", check.c_str(), w.diff, tol);
  EXPECT_LE(w.diff, tol) << check << ": worst element " << w.index << " expected " << w.expected << " actual "
                         << w.actual;
  return w;
}

inline int64_t argmax(const float* row, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (row[i] > row[best]) best = i;
  return best;
}

// Mean next-token cross-entropy of logits [B, L, V] against ids [B, L], in double.
inline double next_token_loss(const float* logits, const std::vector<int32_t>& ids, int64_t B, int64_t L, int64_t V) {
  double total = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < L; ++t) {
      const float* row = logits + (b * L + t) * V;
      double mx = row[0];
      for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(row[v]));
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - mx);
      total += mx + std::log(sum) - double(row[ids[size_t(b * L + t + 1)]]);
    }
  return total / double(B * (L - 1));
}

}  // namespace mambacpp::testing
