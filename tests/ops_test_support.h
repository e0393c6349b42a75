// Helpers shared by the op tests (ops_test, ops_backward_test, ops_scan_backward_test): running a
// check at every kernel level this CPU has, and row-strided matrices whose gaps must come back
// untouched.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "ops/ops.h"

namespace mambacpp::testing {

inline constexpr float kPad = -777.0f;  // fills the gaps between rows

inline std::vector<std::string> kernel_levels() {
  std::vector<std::string> levels = {"generic"};
  if (cpu_features().avx2) levels.push_back("avx2");
  return levels;
}

// Runs body once per kernel level, then restores the automatic choice.
inline void for_each_level(const std::function<void()>& body) {
  const std::string original(ops::kernel_level());
  for (const std::string& level : kernel_levels()) {
    SCOPED_TRACE("kernel level " + level);
    ops::set_kernel_level_for_testing(level);
    body();
  }
  ops::set_kernel_level_for_testing(original);
}

// A [rows, width] matrix stored with row stride ld >= width; the gaps hold kPad.
struct Strided {
  int64_t rows = 0, width = 0, ld = 0;
  std::vector<float> data;
  Strided(int64_t rows_, int64_t width_, int64_t ld_) : rows(rows_), width(width_), ld(ld_), data(size_t(rows_ * ld_), kPad) {}
  bool is_gap(size_t i) const { return int64_t(i) % ld >= width; }
  float* row(int64_t r) { return data.data() + r * ld; }
  float& at(int64_t r, int64_t c) { return data[size_t(r * ld + c)]; }
  float at(int64_t r, int64_t c) const { return data[size_t(r * ld + c)]; }
  float* ptr() { return data.data(); }
  const float* ptr() const { return data.data(); }
  // Columns [c0, c0 + count) of every row, dense.
  std::vector<float> columns(int64_t c0, int64_t count) const {
    std::vector<float> out;
    for (int64_t r = 0; r < rows; ++r)
      out.insert(out.end(), data.begin() + r * ld + c0, data.begin() + r * ld + c0 + count);
    return out;
  }
};

}  // namespace mambacpp::testing
