// The time controller on injected step times: no clock is read here.
#include "elastic/method/time_control.hpp"

#include <doctest/doctest.h>

#include "elastic/method/dp_selector.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace method_time_control_test {

using namespace elastic;

namespace {
// Four units: forward 10 ms with all frozen, each trained unit adds 1 ms
// forward, 2 ms weight gradient and update, 3 ms input gradient stretch.
Profile four_units() {
  Profile p;
  p.key = {"m", 32, 10, 8, 2, "cpu", "sgdw"};
  p.units = {"a", "b", "c", "d"};
  p.t_fwd_frozen = 10;
  p.t_fw = {1, 1, 1, 1};
  p.t_dw = {2, 2, 2, 2};
  p.t_dy = {3, 3, 3, 3};
  p.t_dw_spread = p.t_dy_spread = {0, 0, 0, 0};
  p.t_fwd = 14;
  return p;
}

// Feeds `n` steps of the given times; returns the last completed window's measurement.
std::optional<Measurement> feed(TimeController& c, const std::vector<bool>& mask, int n, double fwd, double bwd,
                                double other = 0) {
  std::optional<Measurement> last;
  for (int i = 0; i < n; ++i)
    if (auto m = c.observe(mask, fwd, bwd, other)) last = m;
  return last;
}
}  // namespace

TEST_CASE("uncorrected, the controller prices a step as the profile does") {
  const Profile p = four_units();
  const TimeController c(p);
  const std::vector<bool> top{false, false, true, true};
  CHECK(c.step_ms(top) == doctest::Approx(p.step_ms(top)));
  CHECK(c.step_ms(top) == doctest::Approx(10 + 2 + 4 + 6));
  CHECK(c.full_ms() == doctest::Approx(10 + 4 + 8 + 12));
  CHECK(c.budget(0.5) == doctest::Approx(0.5 * 34 - 10));
  CHECK(c.dp_t_dw() == std::vector<double>{3, 3, 3, 3});
  // The cheapest useful selection: the top unit alone, 10 + 1 + 2 + 3 = 16 of 34.
  CHECK(c.smallest_rho({0, 0, 0, 1}) == doctest::Approx(16.0 / 34));
  CHECK(c.smallest_rho({1, 0, 0, 0}) == doctest::Approx(25.0 / 34));  // the whole stretch down to unit a
  CHECK(c.smallest_rho({0, 0, 0, 0}) == 1.0);                         // nothing worth training: no smaller rho helps
  // For a DP of 7 quanta per backward (24 ms, so 3.43 ms each), three quanta more: at the exact
  // rho the DP, rounding the top unit's 6 ms up to 2 quanta and the 6 ms budget down to 1, finds
  // nothing; at the padded one it selects the top unit (and c, which fits beside it).
  const std::vector<double> top_two{0, 0, 1, 1};
  const double padded = c.smallest_rho(top_two, 7);
  CHECK(padded == doctest::Approx(16.0 / 34 + 3 * 24.0 / 7 / 34));
  DPSelector<> dp(7);
  CHECK(dp.select(c.dp_t_dw(), c.dp_t_dy(), top_two, c.budget(16.0 / 34)).mask == std::vector<bool>(4, false));
  CHECK(dp.select(c.dp_t_dw(), c.dp_t_dy(), top_two, c.budget(padded)).mask[3]);
  CHECK(c.smallest_rho({1, 0, 0, 0}, 7) == 1.0);  // never above 1
}

TEST_CASE("a window measures after the settling steps, corrects forward and backward, and asks to re-solve once off") {
  const Profile p = four_units();
  TimeController c(p, {.settle_steps = 3, .window_steps = 4, .tolerance = 0.03, .max_resolves = 2});
  const std::vector<bool> top{false, false, true, true};
  c.installed();
  // The machine runs the forward 1.5x and the backward 0.25x of the profile: 18 and 2.5 ms.
  CHECK_FALSE(feed(c, top, 6, 18.0, 2.5));  // 3 settling steps, 3 of 4 window steps
  const auto m = c.observe(top, 18.0, 2.5, 0.25);
  REQUIRE(m);
  CHECK(m->predicted_ms == doctest::Approx(22));
  CHECK(m->measured_ms == doctest::Approx(20.5));
  CHECK(m->error == doctest::Approx(-1.5 / 34));
  CHECK(m->resolve);
  CHECK(c.state().fwd_scale == doctest::Approx(1.5));
  CHECK(c.state().bwd_scale == doctest::Approx(0.25));
  CHECK(c.state().other_ms == doctest::Approx(0.25 / 4));
  CHECK(m->full_ms == doctest::Approx(1.5 * 14 + 0.25 * 20));
  CHECK(c.step_ms(top) == doctest::Approx(20.5));  // the corrected model now predicts what was measured
  CHECK(c.dp_t_dw()[0] == doctest::Approx(0.25 * 2 + 1.5 * 1));
  CHECK(c.budget(0.8) == doctest::Approx(0.8 * 26 - 15));
  // The same machine again: the model holds, nothing to re-solve.
  const auto again = feed(c, top, 4, 18.0, 2.5);
  REQUIRE(again);
  CHECK(again->error == doctest::Approx(0).epsilon(1e-12));
  CHECK_FALSE(again->resolve);
}

TEST_CASE("without correction a window is measured and reported but the model and the selection stay") {
  const Profile p = four_units();
  TimeController c(p, {.correct = false, .settle_steps = 0, .window_steps = 2});
  const std::vector<bool> top{false, false, true, true};
  feed(c, top, 1, 18.0, 2.5);
  const auto m = c.observe(top, 18.0, 2.5, 0);
  REQUIRE(m);
  CHECK_FALSE(m->resolve);
  CHECK(m->measured_ms == doctest::Approx(20.5));
  CHECK(m->full_ms == doctest::Approx(1.5 * 14 + 0.25 * 20));  // the full step on the machine measured
  CHECK(c.state().fwd_scale == 1);
  CHECK(c.state().bwd_scale == 1);
  CHECK(c.step_ms(top) == doctest::Approx(22));
}

TEST_CASE("re-solves are bounded per interval, and a new interval allows them again") {
  const Profile p = four_units();
  TimeController c(p, {.settle_steps = 0, .window_steps = 1, .tolerance = 0.03, .max_resolves = 2});
  const std::vector<bool> all(4, true);
  int resolves = 0;
  for (int i = 0; i < 6; ++i) {  // the speed swings every step
    const double f = i % 2 ? 2.0 : 1.0;
    if (c.observe(all, 14 * f, 20 * f, 0)->resolve) ++resolves;
  }
  CHECK(resolves == 2);
  c.new_interval();
  CHECK(c.observe(all, 14, 20, 0)->resolve);
}

TEST_CASE("a plan with almost no backward leaves the backward's correction to follow the forward's") {
  const Profile p = four_units();
  TimeController c(p, {.settle_steps = 0, .window_steps = 1});
  const std::vector<bool> none(4, false);
  c.observe(none, 20, 0.0, 0);
  CHECK(c.state().fwd_scale == doctest::Approx(2));
  CHECK(c.state().bwd_scale == doctest::Approx(2));
}

TEST_CASE("a uniform slowdown changes no selection; a forward-heavy one moves it within rho") {
  Profile p = four_units();
  p.t_dw = {4, 1, 2, 3};
  const std::vector<double> importance{1.0, 0.2, 0.5, 0.4};
  DPSelector<> dp;
  TimeController c(p, {.settle_steps = 0, .window_steps = 1});
  const auto solve = [&](double rho) { return dp.select(c.dp_t_dw(), c.dp_t_dy(), importance, c.budget(rho)); };
  const Selection before = solve(0.7);
  c.observe(std::vector<bool>(4, true), 2 * p.t_fwd, 2 * p.t_bwd_full(), 0);  // everything twice as slow
  CHECK(c.state().fwd_scale == doctest::Approx(2));
  CHECK(solve(0.7).mask == before.mask);
  for (const double rho : {0.6, 0.7, 0.8, 0.9, 1.0}) {  // above the forward-only floor (30 of 53 ms)
    c.observe(std::vector<bool>(4, true), 3 * p.t_fwd, 0.5 * p.t_bwd_full(), 0);
    const Selection s = solve(rho);
    CAPTURE(rho);
    CHECK(c.step_ms(s.mask) <= rho * c.full_ms() + 1e-9);  // the predicted share never exceeds rho
  }
}

TEST_CASE("a deadline's rho spends the remaining time over the remaining steps") {
  // 10 s left for 100 steps, 1 s kept for probes: 90 ms a step, 10 of them outside forward and backward.
  CHECK(deadline_rho(10000, 100, 1000, 160, 10) == doctest::Approx(0.5));
  CHECK(deadline_rho(10000, 100, 0, 50, 0) == doctest::Approx(2.0));  // more than a full step: the caller clamps
  CHECK(deadline_rho(-5, 100, 0, 50, 0) < 0);
  CHECK(deadline_rho(100, 0, 0, 50, 0) == 1.0);
}

}  // namespace method_time_control_test
