#include "train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace mambacpp {
namespace {

constexpr auto kBarInterval = std::chrono::milliseconds(100);
constexpr auto kLogInterval = std::chrono::seconds(5);
constexpr int kBarWidth = 24;

std::string format(const char* fmt, double v) {
  char text[64];
  std::snprintf(text, sizeof text, fmt, v);
  return text;
}

std::string loss_text(const StepReport& r) { return r.skipped ? "skipped" : format("%.4f", r.train_loss); }

std::string rate_text(double tok_per_s) {
  return tok_per_s >= 1e4 ? format("%.1fk tok/s", tok_per_s / 1e3) : format("%.0f tok/s", tok_per_s);
}

std::string bar(int64_t step, int64_t steps) {
  const int filled = int(double(kBarWidth) * double(step) / double(std::max<int64_t>(steps, 1)));
  std::string text = "[";
  text.append(size_t(filled), '#').append(size_t(kBarWidth - filled), '.').push_back(']');
  return text;
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = int64_t(std::llround(seconds));
  char text[32];
  if (s < 60) std::snprintf(text, sizeof text, "%llds", static_cast<long long>(s));
  else if (s < 3600) std::snprintf(text, sizeof text, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  else std::snprintf(text, sizeof text, "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
  return text;
}

ProgressDisplay::ProgressDisplay(std::FILE* out) : ProgressDisplay(out, ::isatty(::fileno(out)) == 1) {}

ProgressDisplay::ProgressDisplay(std::FILE* out, bool terminal) : out_(out), terminal_(terminal) {}

ProgressDisplay::~ProgressDisplay() {
  if (bar_shown_) std::fputc('\n', out_);
}

void ProgressDisplay::step(const StepReport& r) {
  const bool last = r.step >= r.steps;
  if (!last && Clock::now() - last_draw_ < (terminal_ ? Clock::duration(kBarInterval) : Clock::duration(kLogInterval)))
    return;
  last_draw_ = Clock::now();
  const std::string fields = cat("loss ", loss_text(r), " | ", rate_text(r.tok_per_s), " | lr ", format("%.2e", r.lr),
                                 " | ETA ", format_duration(r.eta_s));
  if (terminal_) {
    // \r and erase-to-end-of-line: the bar is redrawn in place.
    std::fprintf(out_, "\r\033[K%lld/%lld %s %s", static_cast<long long>(r.step), static_cast<long long>(r.steps),
                 bar(r.step, r.steps).c_str(), fields.c_str());
    bar_shown_ = true;
  } else {
    std::fprintf(out_, "step %lld/%lld | %s\n", static_cast<long long>(r.step), static_cast<long long>(r.steps),
                 fields.c_str());
  }
  std::fflush(out_);
}

void ProgressDisplay::note(const std::string& line) {
  clear_bar();
  std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

void ProgressDisplay::clear_bar() {
  if (!bar_shown_) return;
  std::fputs("\r\033[K", out_);
  bar_shown_ = false;
  last_draw_ = {};  // redraw at the next step
}

}  // namespace mambacpp
