#include "elastic/method/dp_selector.hpp"

#include <cmath>

#include <doctest/doctest.h>

#include "elastic/core/random.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace method_dp_selector_test {

using namespace elastic;

namespace {
struct Instance {
  std::vector<double> dw, dy, imp;
  double budget;
};

double backward_time(const Instance& p, std::uint32_t subset) {
  if (!subset) return 0;
  const int f = std::countr_zero(subset);
  double t = 0;
  for (std::size_t k = std::size_t(f); k < p.dw.size(); ++k) t += p.dy[k] + ((subset >> k) & 1 ? p.dw[k] : 0);
  return t;
}

// Best importance over all subsets whose time, by `time`, fits `budget`.
template <class Time>
double brute_force(const Instance& p, double budget, Time time) {
  double best = 0;
  for (std::uint32_t s = 1; s < (1u << p.dw.size()); ++s) {
    if (time(s) > budget) continue;
    double v = 0;
    for (std::size_t k = 0; k < p.dw.size(); ++k)
      if ((s >> k) & 1) v += p.imp[k];
    best = std::max(best, v);
  }
  return best;
}

Instance random_instance(Rng& rng, std::size_t n) {
  Instance p;
  double total = 0;
  for (std::size_t k = 0; k < n; ++k) {
    p.dw.push_back(rng.uniform() < 0.1f ? 0.0 : rng.uniform(0.0f, 5.0f));
    p.dy.push_back(rng.uniform() < 0.1f ? 0.0 : rng.uniform(0.0f, 3.0f));
    p.imp.push_back(rng.uniform(-0.3f, 1.0f));
    total += p.dw.back() + p.dy.back();
  }
  p.budget = rng.uniform(0.0f, 1.1f) * total;
  return p;
}
}  // namespace

TEST_CASE("DP selection is optimal against brute force, exact for the quantized problem, never over budget") {
  Rng rng(2024);
  DPSelector<> dp(1000);
  int empty = 0, reaches_optimum = 0;  // the instances cover both ends, not only trivial ones
  for (int trial = 0; trial < 3000; ++trial) {
    const std::size_t n = trial < 2800 ? 1 + rng.below(12) : 13 + rng.below(4);
    const Instance p = random_instance(rng, n);
    const Selection s = dp.select(p.dw, p.dy, p.imp, p.budget);
    REQUIRE(s.mask.size() == n);
    std::uint32_t subset = 0;
    double imp = 0;
    for (std::size_t k = 0; k < n; ++k)
      if (s.mask[k]) {
        subset |= 1u << k;
        imp += p.imp[k];
        CHECK(p.imp[k] > 0);  // non-positive importance is never selected
      }
    CHECK(s.cost <= p.budget);
    CHECK(s.cost == doctest::Approx(backward_time(p, subset)));
    CHECK(s.importance == doctest::Approx(imp));
    CHECK(s.earliest == (subset ? std::countr_zero(subset) : -1));
    // Never better than the true optimum...
    const double real_opt = brute_force(p, p.budget, [&](std::uint32_t m) { return backward_time(p, m); });
    CHECK(s.importance <= real_opt + 1e-9);
    empty += subset == 0;
    reaches_optimum += subset != 0 && s.importance >= real_opt - 1e-9;
    // ...and at least the optimum of the quantized problem (ceil costs, floor budget).
    double total = 0;
    for (std::size_t k = 0; k < n; ++k) total += p.dw[k] + p.dy[k];
    const double scale = 1000.0 / total;
    const double cap = std::floor(p.budget * scale);
    const double quant_opt = brute_force(p, cap, [&](std::uint32_t m) {
      if (!m) return 0.0;
      const std::size_t f = std::size_t(std::countr_zero(m));
      double suffix = 0, t = 0;
      for (std::size_t k = f; k < n; ++k) {
        suffix += p.dy[k];
        if ((m >> k) & 1) t += std::ceil(p.dw[k] * scale);
      }
      return t + std::ceil(suffix * scale);
    });
    CHECK(s.importance >= quant_opt - 1e-9);
    // The quantization bound: within what (n + 1) rounded-up units can cost.
    const double shrunk =
        brute_force(p, p.budget - double(n + 1) / scale, [&](std::uint32_t m) { return backward_time(p, m); });
    CHECK(s.importance >= shrunk - 1e-9);
  }
  CHECK(empty > 30);              // budgets too small for any useful unit
  CHECK(reaches_optimum > 2000);  // quantization rarely costs the true optimum
}

TEST_CASE("DP selection edge cases") {
  DPSelector<> dp;
  const std::vector<double> dw{1, 2, 3}, dy{1, 1, 1}, imp{0.5, 1.0, 0.2};
  SUBCASE("a budget below any selection gives an empty mask") {
    const auto s = dp.select(dw, dy, imp, 1.5);  // cheapest: unit 2 alone costs 1 + 3 = 4
    CHECK(s.mask == std::vector<bool>{false, false, false});
    CHECK(s.earliest == -1);
    CHECK(s.cost == 0);
  }
  SUBCASE("a budget above everything selects every positive-importance unit") {
    const std::vector<double> mixed{0.5, -1.0, 0.2};
    const auto s = dp.select(dw, dy, mixed, 100.0);
    CHECK(s.mask == std::vector<bool>{true, false, true});
    CHECK(s.cost == doctest::Approx(3 + 1 + 3));
    const auto exact = dp.select(dw, dy, imp, 9.0);  // exactly the full backward time
    CHECK(exact.mask == std::vector<bool>{true, true, true});
  }
  SUBCASE("the t_dy stretch down to the earliest unit is paid") {
    // Unit 0 is the most important, but reaching it costs all of t_dy (3) plus its t_dw (1).
    const std::vector<double> w{1, 1, 1}, d{1, 1, 1}, i{10, 1, 2};
    const auto s = dp.select(w, d, i, 3.5);
    CHECK(s.mask == std::vector<bool>{false, false, true});  // {1, 2} would cost 2 + 2 = 4
    CHECK(s.cost == doctest::Approx(2.0));
    const auto t = dp.select(w, d, i, 4.2);  // 4 plus room for rounding up
    CHECK(t.mask == std::vector<bool>{true, false, false});
    CHECK(t.cost == doctest::Approx(4.0));
  }
  SUBCASE("zero times and N = 1") {
    const std::vector<double> z{0, 0}, i{1, 2};
    const auto s = dp.select(z, z, i, 0.0);
    CHECK(s.mask == std::vector<bool>{true, true});
    const std::vector<double> one_w{2}, one_d{1}, one_i{0.7};
    CHECK(dp.select(one_w, one_d, one_i, 3.0).mask == std::vector<bool>{true});
    CHECK(dp.select(one_w, one_d, one_i, 2.9).mask == std::vector<bool>{false});
  }
  SUBCASE("NaN or negative inputs are clear errors") {
    const std::vector<double> bad{1, std::nan(""), 1}, neg{1, -1, 1};
    CHECK_THROWS_WITH_AS(dp.select(bad, dy, imp, 5), doctest::Contains("t_dw[1]"), UsageError);
    CHECK_THROWS_WITH_AS(dp.select(dw, neg, imp, 5), doctest::Contains("t_dy[1]"), UsageError);
    CHECK_THROWS_WITH_AS(dp.select(dw, dy, bad, 5), doctest::Contains("importance[1] is NaN"), UsageError);
    CHECK_THROWS_WITH_AS(dp.select(dw, dy, imp, std::nan("")), doctest::Contains("budget is NaN"), UsageError);
    const std::vector<double> short_list{1, 1};
    CHECK_THROWS_AS(dp.select(dw, short_list, imp, 5), UsageError);
    CHECK_THROWS_AS(DPSelector<>(0), UsageError);
  }
}

}  // namespace method_dp_selector_test
