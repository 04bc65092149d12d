// Timing utilities: a monotonic stopwatch and robust summaries (median, spread)
// of repeated measurements, used by the profiler and the benchmarks.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

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
  double elapsed_ms() const {
    return std::chrono::duration<double, std::milli>(Clock::now() - start_).count();
  }

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point start_;
};

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
