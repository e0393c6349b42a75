#include "train/metrics.h"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "core/error.h"
#include "io/atomic_file.h"

namespace mambacpp {

namespace fs = std::filesystem;

namespace {

constexpr int kColumns = 8;

// Enough digits that equal values print equally and differing losses differ.
std::string format_value(const std::optional<double>& v) {
  if (!v) return "";
  if (std::isnan(*v)) return "nan";
  if (std::isinf(*v)) return *v > 0 ? "inf" : "-inf";
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", *v);
  return text;
}

std::optional<std::optional<double>> parse_value(std::string_view field) {
  if (field.empty()) return std::optional<double>();
  if (field == "nan") return std::optional<double>(NAN);
  if (field == "inf") return std::optional<double>(INFINITY);
  if (field == "-inf") return std::optional<double>(-INFINITY);
  double v = 0;
  auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), v);
  if (ec != std::errc() || end != field.data() + field.size()) return std::nullopt;
  return std::optional<double>(v);
}

std::optional<int64_t> parse_integer(std::string_view field) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), v);
  if (ec != std::errc() || end != field.data() + field.size() || v < 0) return std::nullopt;
  return v;
}

}  // namespace

std::string format_metrics_row(const MetricsRow& r) {
  char elapsed[32];
  std::snprintf(elapsed, sizeof elapsed, "%.3f", r.elapsed_s);
  return cat(r.step, ",", r.tokens, ",", format_value(r.train_loss), ",", format_value(r.val_loss), ",",
             format_value(r.lr), ",", format_value(r.grad_norm), ",", format_value(r.tok_per_s), ",", elapsed);
}

std::optional<MetricsRow> parse_metrics_row(std::string_view line) {
  std::vector<std::string_view> fields;
  for (size_t start = 0;;) {
    const size_t comma = line.find(',', start);
    fields.push_back(line.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  if (fields.size() != kColumns) return std::nullopt;
  MetricsRow r;
  const auto step = parse_integer(fields[0]), tokens = parse_integer(fields[1]);
  std::optional<std::optional<double>> values[5];
  for (int i = 0; i < 5; ++i) values[i] = parse_value(fields[2 + i]);
  const auto elapsed = parse_value(fields[7]);
  if (!step || !tokens || !elapsed || !*elapsed) return std::nullopt;
  for (const auto& v : values)
    if (!v) return std::nullopt;
  r.step = *step;
  r.tokens = *tokens;
  r.train_loss = *values[0];
  r.val_loss = *values[1];
  r.lr = *values[2];
  r.grad_norm = *values[3];
  r.tok_per_s = *values[4];
  r.elapsed_s = **elapsed;
  return r;
}

MetricsLog::MetricsLog(fs::path path, std::vector<MetricsRow> rows) : path_(std::move(path)), rows_(std::move(rows)) {
  // The kept rows are rewritten atomically; new ones are appended to that file.
  std::string text = cat(kMetricsHeader, "\n");
  for (const MetricsRow& r : rows_) text += format_metrics_row(r) + "\n";
  write_file_atomically(path_, text);
  file_ = std::fopen(path_.c_str(), "ab");
  if (!file_) fail(path_.string(), ": cannot open for appending: ", std::strerror(errno));
}

MetricsLog MetricsLog::create(const fs::path& path) { return MetricsLog(path, {}); }

MetricsLog MetricsLog::resume(const fs::path& path, int64_t step) {
  std::vector<MetricsRow> rows;
  std::ifstream in(path, std::ios::binary);
  std::stringstream all;
  all << in.rdbuf();
  const std::string text = all.str();
  // Whole lines only: a run killed mid-write leaves a partial last line.
  size_t start = text.find('\n');  // after the header
  while (start != std::string::npos && start + 1 < text.size()) {
    const size_t end = text.find('\n', start + 1);
    if (end == std::string::npos) break;
    const std::optional<MetricsRow> row = parse_metrics_row(std::string_view(text).substr(start + 1, end - start - 1));
    if (!row || row->step > step) break;
    rows.push_back(*row);
    start = end;
  }
  return MetricsLog(path, std::move(rows));
}

MetricsLog::MetricsLog(MetricsLog&& other) noexcept
    : path_(std::move(other.path_)), rows_(std::move(other.rows_)), file_(std::exchange(other.file_, nullptr)) {}

MetricsLog::~MetricsLog() {
  if (file_) std::fclose(file_);
}

void MetricsLog::append(const MetricsRow& row) {
  const std::string line = format_metrics_row(row) + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
    fail(path_.string(), ": cannot append a row: ", std::strerror(errno));
  rows_.push_back(row);
}

}  // namespace mambacpp
