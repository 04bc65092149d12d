// The progress line of a training run. On a terminal it redraws one line in
// place (at most ten times a second); when stdout is a file or a pipe it
// prints plain lines, about ten per epoch, so logs stay readable.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>

#include <unistd.h>

#include <fmt/format.h>

#include "elastic/core/timer.hpp"

namespace elastic::cli {

inline std::string format_duration(double seconds) {
  const auto s = static_cast<long long>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

class Progress {
 public:
  explicit Progress(bool terminal = ::isatty(::fileno(stdout)) == 1) : terminal_(terminal) {}

  // Whether the state after step `done` of `total` in the current epoch is
  // shown: on a terminal at most ten times a second and at the epoch's end,
  // otherwise about ten times per epoch. Callers format the line only then.
  bool due(std::int64_t done, std::int64_t total) const {
    if (terminal_) return done >= total || since_draw_.elapsed_ms() >= 100;
    const std::int64_t every = std::max<std::int64_t>(1, total / 10);
    return done % every == 0 || done == total;
  }

  void show(const std::string& line) {
    if (terminal_) {
      since_draw_.reset();
      fmt::print("\r\033[K{}", line);
      std::fflush(stdout);
      drawn_ = true;
      return;
    }
    fmt::print("{}\n", line);
    std::fflush(stdout);
  }

  // Ends a redrawn line so that the next output starts on its own line.
  void finish() {
    if (terminal_ && drawn_) fmt::print("\n");
    drawn_ = false;
    std::fflush(stdout);
  }

  // A whole line of other output, above the progress line.
  void print_line(const std::string& line) {
    if (terminal_ && drawn_) fmt::print("\r\033[K");
    drawn_ = false;
    fmt::print("{}\n", line);
    std::fflush(stdout);
  }

 private:
  bool terminal_;
  bool drawn_ = false;
  Stopwatch since_draw_;
};

}  // namespace elastic::cli
