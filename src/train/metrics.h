// RUN/metrics.csv: a row per optimizer step (and a row for step 0 holding the initial validation
// loss), appended and flushed as the run goes, so a killed run keeps every finished row. Empty
// fields mean "not measured". A resumed run first drops the rows after its checkpoint's step, so
// the file reads as if the run had never stopped (only elapsed_s and tok_per_s differ).
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mambacpp {

inline constexpr std::string_view kMetricsHeader = "step,tokens,train_loss,val_loss,lr,grad_norm,tok_per_s,elapsed_s";

struct MetricsRow {
  int64_t step = 0, tokens = 0;
  std::optional<double> train_loss, val_loss, lr, grad_norm, tok_per_s;
  double elapsed_s = 0;
};

std::string format_metrics_row(const MetricsRow& row);  // no newline
// nullopt unless `line` is a complete row as format_metrics_row writes it.
std::optional<MetricsRow> parse_metrics_row(std::string_view line);

class MetricsLog {
 public:
  // A new file holding only the header (replacing any).
  static MetricsLog create(const std::filesystem::path& path);
  // Keeps the rows of steps <= `step` of an existing file (a missing file starts empty) and drops
  // the rest, including a partial last line.
  static MetricsLog resume(const std::filesystem::path& path, int64_t step);

  MetricsLog(MetricsLog&& other) noexcept;
  MetricsLog& operator=(MetricsLog&&) = delete;
  ~MetricsLog();

  // Writes and flushes the row; BadInput naming the file if it cannot.
  void append(const MetricsRow& row);
  const std::vector<MetricsRow>& rows() const { return rows_; }

 private:
  MetricsLog(std::filesystem::path path, std::vector<MetricsRow> rows);

  std::filesystem::path path_;
  std::vector<MetricsRow> rows_;
  std::FILE* file_ = nullptr;
};

}  // namespace mambacpp
