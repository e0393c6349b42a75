// What `mambacpp train` shows while it runs: on a terminal a progress bar redrawn in place (step,
// loss, tokens/s, lr, ETA); elsewhere (a log file, a pipe) a plain line every few seconds. Notes
// (evaluations, checkpoints) go on lines of their own either way.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

#include "train/trainer.h"

namespace mambacpp {

// "45s", "4m12s", "2h05m"
std::string format_duration(double seconds);

class ProgressDisplay {
 public:
  // A bar when `out` is a terminal, else log lines.
  explicit ProgressDisplay(std::FILE* out = stderr);
  ProgressDisplay(std::FILE* out, bool terminal);
  ~ProgressDisplay();  // ends the bar's line

  void step(const StepReport& r);
  void note(const std::string& line);

 private:
  using Clock = std::chrono::steady_clock;
  void clear_bar();

  std::FILE* out_;
  bool terminal_, bar_shown_ = false;
  Clock::time_point last_draw_{};
};

}  // namespace mambacpp
