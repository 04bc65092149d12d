// Closed-loop time control (docs/method.md, "Time control"). The profile
// prices a step once, on an idle machine, before training; the machine then
// changes its speed (other load, heat, a slower spell of a shared VM) and the
// profile's split between forward and backward is only roughly right. The
// TimeController corrects the profile from the steps the Trainer measures:
//   step(m) = a * F(m) + b * B(m)
// with F and B the profile's forward and backward time of unit mask m
// (profile.hpp) and a, b the measured-over-profiled ratios of the latest
// measurement window. A full step is inferred from the same corrected model,
// a * F(all) + b * B(all): measuring one would cost a whole step of time, and
// the model's only extrapolation is that the backward of units the plan does
// not train slows by the same factor as that of the units it does. The Trainer
// asks the controller for DP costs and budgets in corrected milliseconds and
// re-solves when a window's measured step differs from its prediction by more
// than `tolerance` of a full step.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "elastic/core/error.hpp"
#include "elastic/method/profile.hpp"

namespace elastic {

struct TimeControlOptions {
  // false: measurements are recorded (measured shares) but never change the
  // model, so selections depend on the profile and importance alone.
  bool correct = true;
  int settle_steps = 5;     // steps after a selection is installed before measuring it
  int window_steps = 20;    // steps per measurement window
  double tolerance = 0.03;  // re-solve when |measured - predicted| exceeds this share of a full step
  int max_resolves = 3;     // corrections that re-solve the DP, per interval (between probes)
  // Thread adaptation: when a window's full step is `slow_factor` times the
  // profile's or slower and the run uses more than one thread, the next window
  // runs on one thread fewer (a trial); the count whose window gave the faster
  // full step stays. While on fewer threads, the full count is tried again
  // after `retry_windows` windows, so a busy core that frees up is noticed.
  // Each lost trial after the first doubles the wait before the next one
  // (retry_windows, again retry_windows, then 2x, 4x, ... up to 64x), so a
  // machine that is slow on any count pays little for trying.
  bool adapt_threads = true;
  double slow_factor = 1.4;
  int retry_windows = 10;
};

// Everything the controller has learned and is measuring; saved in checkpoints
// so that a resumed run continues from the same state.
struct ControlState {
  double fwd_scale = 1, bwd_scale = 1;  // a and b: measured / profiled forward and backward
  double other_ms = 0;                  // per step, outside forward and backward (batch loading, bookkeeping)
  std::int64_t resolves = 0;            // corrections that re-solved since the last probe
  std::int64_t since_install = 0;       // steps since the selection was installed
  std::int64_t window = 0;              // steps summed so far in the current window
  double fwd_sum = 0, bwd_sum = 0, other_sum = 0;
  // Thread adaptation: the count in force, the windows completed on it since
  // it was chosen, consecutive lost trials (each doubles the wait before the
  // next), and during a trial window the count it left with that count's full
  // step and scales (restored if the trial loses).
  int threads = 0;
  std::int64_t windows_on = 0, lost_trials = 0;
  int trial_from = 0;  // 0: no trial running
  double trial_full = 0, trial_fwd_scale = 1, trial_bwd_scale = 1;
  bool operator==(const ControlState&) const = default;
};

// One completed measurement window.
struct Measurement {
  double predicted_ms = 0;  // the step the model predicted for the mask, before this window's correction
  double measured_ms = 0;   // mean forward + backward of the window
  double full_ms = 0;       // a full step under the corrected model
  double error = 0;         // (measured - predicted) / full step before the correction
  bool resolve = false;     // the error exceeds the tolerance and re-solves remain
  int threads = 0;          // run on this many kernel threads from the next step (0: no change)
};

class TimeController {
 public:
  TimeController(const Profile& p, TimeControlOptions o = {}) : p_(p), o_(o) {
    if (o.settle_steps < 0 || o.window_steps < 1 || !(o.tolerance > 0) || o.max_resolves < 0 || !(o.slow_factor > 1) ||
        o.retry_windows < 1)
      usage_fail(
          "time control: settle_steps >= 0, window_steps >= 1, tolerance > 0, max_resolves >= 0, slow_factor > 1 "
          "and retry_windows >= 1");
    s_.threads = p.key.threads;
  }
  // Kernel threads in force.
  int threads() const { return s_.threads; }

  const ControlState& state() const { return s_; }
  // A state without a thread count (a checkpoint from before thread
  // adaptation) runs on the profile's.
  void restore(const ControlState& s) {
    if (s.threads > p_.key.threads || s.trial_from > p_.key.threads)
      fail("time control state: {} threads, but the profile was measured on {}", std::max(s.threads, s.trial_from),
           p_.key.threads);
    s_ = s;
    if (s_.threads <= 0) s_.threads = p_.key.threads;
  }
  const TimeControlOptions& options() const { return o_; }

  // Corrected times, ms.
  double forward_ms(const std::vector<bool>& unit_mask) const { return s_.fwd_scale * p_.t_forward(unit_mask); }
  double step_ms(const std::vector<bool>& unit_mask) const {
    return forward_ms(unit_mask) + s_.bwd_scale * p_.t_bwd(unit_mask);
  }
  double full_ms() const { return s_.fwd_scale * p_.t_forward_all() + s_.bwd_scale * p_.t_bwd_full(); }
  // The DP's inputs in corrected ms: a unit's cost is its weight gradient and
  // update plus the forward time it adds when trained; the forward with every
  // unit frozen comes off the budget.
  std::vector<double> dp_t_dw() const {
    std::vector<double> t(p_.t_dw.size());
    for (std::size_t u = 0; u < t.size(); ++u) t[u] = s_.bwd_scale * p_.t_dw[u] + s_.fwd_scale * p_.t_fw[u];
    return t;
  }
  std::vector<double> dp_t_dy() const {
    std::vector<double> t(p_.t_dy);
    for (double& x : t) x *= s_.bwd_scale;
    return t;
  }
  double budget(double rho) const { return rho * full_ms() - s_.fwd_scale * p_.t_fwd_frozen; }
  // The smallest rho whose budget admits one unit with positive importance. With the DP's
  // `dp_resolution` (quanta per backward pass), three quanta more: the DP rounds the unit's
  // cost and its stretch up and the budget down, one quantum each at most.
  double smallest_rho(const std::vector<double>& importance, int dp_resolution = 0) const {
    const auto dw = dp_t_dw(), dy = dp_t_dy();
    const double full = full_ms(), fwd0 = s_.fwd_scale * p_.t_fwd_frozen;
    double best = 1.0, stretch = 0, total = 0;
    for (std::size_t u = dw.size(); u-- > 0;) {
      stretch += dy[u];
      total += dw[u] + dy[u];
      if (importance[u] > 0) best = std::min(best, (fwd0 + stretch + dw[u]) / full);
    }
    if (best < 1.0 && dp_resolution > 0) best = std::min(1.0, best + 3 * total / dp_resolution / full);
    return best;
  }

  // A new selection is installed: measuring starts afresh after the settling steps.
  void installed() {
    s_.since_install = 0;
    clear_window();
  }
  // A new interval (a probe ran): corrections may re-solve again.
  void new_interval() { s_.resolves = 0; }

  // One step under `unit_mask`: its forward and backward (with updates) times
  // and the rest of the step. Returns a Measurement when a window completes.
  std::optional<Measurement> observe(const std::vector<bool>& unit_mask, double fwd_ms, double bwd_ms,
                                     double other_ms) {
    if (++s_.since_install <= o_.settle_steps) return std::nullopt;
    s_.fwd_sum += fwd_ms;
    s_.bwd_sum += bwd_ms;
    s_.other_sum += other_ms;
    if (++s_.window < o_.window_steps) return std::nullopt;
    const double n = double(s_.window);
    const double mf = s_.fwd_sum / n, mb = s_.bwd_sum / n;
    Measurement out;
    out.predicted_ms = step_ms(unit_mask);
    out.measured_ms = mf + mb;
    out.error = (out.measured_ms - out.predicted_ms) / full_ms();
    const double pf = p_.t_forward(unit_mask), pb = p_.t_bwd(unit_mask);
    const double a = pf > 0 ? mf / pf : s_.fwd_scale;
    // A plan with almost no backward says little about the backward's speed:
    // then the backward follows the forward's correction.
    const double b = pb >= 0.02 * p_.t_bwd_full() ? mb / pb : a;
    out.full_ms = a * p_.t_forward_all() + b * p_.t_bwd_full();
    s_.other_ms = s_.other_sum / n;
    clear_window();
    if (!o_.correct) return out;
    ++s_.windows_on;
    if (o_.adapt_threads && adapt_threads(out, a, b)) return out;
    s_.fwd_scale = a;
    s_.bwd_scale = b;
    if (std::abs(out.error) > o_.tolerance && s_.resolves < o_.max_resolves) {
      out.resolve = true;
      ++s_.resolves;
    }
    return out;
  }

 private:
  // Decides the thread count after a window measured scales (a, b) and full
  // step out.full_ms on s_.threads. Returns true when the count changes: then
  // out.threads is the new count and nothing is re-solved yet (a trial's
  // window measures the new count's scales; a lost trial restores the old).
  bool adapt_threads(Measurement& out, double a, double b) {
    const int full_count = p_.key.threads;
    if (s_.trial_from != 0) {  // this window was a trial of s_.threads
      const int from = s_.trial_from;
      s_.trial_from = 0;
      if (out.full_ms < s_.trial_full) {  // the trial wins: its scales stand, re-solve as usual
        s_.lost_trials = 0;
        return false;
      }
      // Lost: back; the wait before the next trial doubles from the second loss in a row on.
      s_.lost_trials = std::min<std::int64_t>(s_.lost_trials + 1, 7);
      out.threads = from;
      s_.fwd_scale = s_.trial_fwd_scale;
      s_.bwd_scale = s_.trial_bwd_scale;
      switch_to(from);
      return true;
    }
    const std::int64_t wait = s_.lost_trials == 0 ? 0 : std::int64_t(o_.retry_windows) << (s_.lost_trials - 1);
    int to = 0;
    if (s_.threads < full_count && s_.windows_on >= std::max<std::int64_t>(o_.retry_windows, wait))
      to = full_count;  // try the full count again
    else if (s_.threads == full_count && full_count > 1 && s_.windows_on >= std::max<std::int64_t>(1, wait) &&
             out.full_ms >= o_.slow_factor * p_.full_step_ms())
      to = full_count - 1;
    if (to == 0) return false;
    s_.trial_from = s_.threads;
    s_.trial_full = out.full_ms;
    s_.trial_fwd_scale = s_.fwd_scale = a;
    s_.trial_bwd_scale = s_.bwd_scale = b;
    out.threads = to;
    switch_to(to);
    return true;
  }
  void switch_to(int threads) {
    s_.threads = threads;
    s_.windows_on = 0;
    s_.since_install = 0;  // frozen weights are re-laid-out for the new kernels: settle again
  }

  void clear_window() {
    s_.window = 0;
    s_.fwd_sum = s_.bwd_sum = s_.other_sum = 0;
  }

  const Profile& p_;
  TimeControlOptions o_;
  ControlState s_;
};

// Deadline planning: the rho that spends `remaining_ms` of training time on
// `remaining_steps` steps, after setting aside `reserved_ms` (future probes),
// given the corrected full step and the time per step outside forward and
// backward. Not clamped: the caller clamps to [smallest useful rho, 1].
inline double deadline_rho(double remaining_ms, std::int64_t remaining_steps, double reserved_ms, double full_ms,
                           double other_ms) {
  if (remaining_steps <= 0) return 1.0;
  const double per_step = (remaining_ms - reserved_ms) / double(remaining_steps) - other_ms;
  return per_step / full_ms;
}

}  // namespace elastic
