// Timing utilities: a monotonic stopwatch and robust summaries (median, spread)
// of repeated measurements, used by the profiler and the benchmarks.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "elastic/core/error.hpp"

namespace elastic {

// Milliseconds on the monotonic clock Stopwatch reads; what a Trainer's clock
// defaults to (tests give it a fake one).
inline double monotonic_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class Stopwatch {
 public:
  Stopwatch() : start_(Clock::now()) {}
  void reset() { start_ = Clock::now(); }
  double elapsed_ms() const { return std::chrono::duration<double, std::milli>(Clock::now() - start_).count(); }

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point start_;
};

// A duration in seconds from "90", "90s", "45m" or "2h" (fractions allowed);
// `flag` names the option in the error.
inline double parse_duration_s(const std::string& text, std::string_view flag) {
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const std::string unit = text.substr(used);
  const double scale = unit.empty() || unit == "s" ? 1 : unit == "m" ? 60 : unit == "h" ? 3600 : -1;
  if (used == 0 || scale < 0 || !(value > 0) || !std::isfinite(value))
    usage_fail("{} '{}' is not a positive duration: seconds, or a number with s, m or h (e.g. 90, 45m, 2h)", flag,
               text);
  return value * scale;
}

struct Summary {
  double median = 0, min = 0, max = 0;
};

// Median, min and max of a non-empty sample (takes a copy: it sorts).
inline Summary summarize(std::vector<double> sample) {
  Summary s;
  if (sample.empty()) return s;
  std::sort(sample.begin(), sample.end());
  const std::size_t n = sample.size();
  s.median = n % 2 ? sample[n / 2] : 0.5 * (sample[n / 2 - 1] + sample[n / 2]);
  s.min = sample.front();
  s.max = sample.back();
  return s;
}

}  // namespace elastic
