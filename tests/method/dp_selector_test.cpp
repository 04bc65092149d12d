#include "elastic/method/dp_selector.hpp"

#include <algorithm>
#include <cmath>
#include <ranges>

#include <malloc.h>

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

// The optimum of the quantized problem the selector solves (costs rounded up, budget down, on
// `resolution` units for the whole backward pass), by a separate knapsack for every earliest unit
// f: O(N^2 T), no table shared between the f, no reach bound.
double quantized_optimum(const Instance& p, int resolution) {
  const std::size_t n = p.dw.size();
  double total = 0;
  for (std::size_t k = 0; k < n; ++k) total += p.dw[k] + p.dy[k];
  const double scale = total > 0 ? resolution / total : 0.0;
  const auto cap = static_cast<long>(std::min<double>(std::floor(p.budget * scale), resolution));
  double best = 0, suffix = 0;
  for (std::size_t f = n; f-- > 0;) {
    suffix += p.dy[f];
    const long need = static_cast<long>(std::ceil(suffix * scale)) + static_cast<long>(std::ceil(p.dw[f] * scale));
    if (p.imp[f] <= 0 || need > cap) continue;
    std::vector<double> knap(static_cast<std::size_t>(cap - need) + 1, 0.0);
    for (std::size_t k = f + 1; k < n; ++k) {
      if (p.imp[k] <= 0) continue;
      const auto c = static_cast<std::size_t>(std::ceil(p.dw[k] * scale));
      for (std::size_t b = knap.size(); b-- > c;) knap[b] = std::max(knap[b], knap[b - c] + p.imp[k]);
    }
    best = std::max(best, p.imp[f] + knap.back());
  }
  return best;
}

// The kernels this CPU runs: the portable loop and whichever vector loops it has.
std::vector<DPKernel> kernels_here() {
  std::vector<DPKernel> out{DPKernel::portable};
  for (const DPKernel k : {DPKernel::avx2, DPKernel::avx512}) try {
      DPSelector<> probe(1000, k);
      out.push_back(k);
    } catch (const UsageError&) {
    }
  return out;
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

TEST_CASE("every DP kernel finds the quantized optimum on large instances, with the same selection") {
  Rng rng(77);
  const auto kernels = kernels_here();
  MESSAGE("kernels on this CPU: " << kernels.size() << " (portable, then avx2 and avx512 where present)");
  int nonempty = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const std::size_t n = trial < 40 ? 20 + rng.below(60) : 200 + rng.below(100);
    const int resolution = trial % 3 == 0 ? 10000 : trial % 3 == 1 ? 1000 : 37;
    const Instance p = random_instance(rng, n);
    DPSelector<> reference(resolution, DPKernel::portable);
    const Selection want = reference.select(p.dw, p.dy, p.imp, p.budget);
    nonempty += want.earliest >= 0;
    // Exact for the quantized problem, unless every useful unit fits unquantized (then it is all of them).
    const bool all_useful = std::ranges::all_of(std::views::iota(std::size_t{0}, n),
                                                [&](std::size_t k) { return want.mask[k] == (p.imp[k] > 0); });
    if (n < 100 && resolution <= 1000 && !all_useful)
      CHECK(want.importance == doctest::Approx(quantized_optimum(p, resolution)).epsilon(1e-12));
    CHECK(want.cost <= p.budget);
    for (const DPKernel k : kernels) {
      DPSelector<> dp(resolution, k);
      const Selection s = dp.select(p.dw, p.dy, p.imp, p.budget);
      CHECK_MESSAGE(s.mask == want.mask, dp.kernel() << " n=" << n << " T=" << resolution);
      CHECK(s.importance == want.importance);
    }
  }
  CHECK(nonempty > 40);
}

TEST_CASE("DP selection under a time and a memory budget is optimal against brute force for both quantized problems") {
  Rng rng(99);
  const auto kernels = kernels_here();
  int bound_by_memory = 0, nonempty = 0;
  for (int trial = 0; trial < 1500; ++trial) {
    const std::size_t n = 1 + rng.below(14);
    Instance p = random_instance(rng, n);
    // stretch[f] never grows towards the output: the backward pass down to an earlier unit keeps
    // at least what one down to a later unit keeps (so a unit of importance <= 0, never selected,
    // could not lower the memory as the earliest one).
    std::vector<double> stretch(n + 1, 0.0), unit(n);
    double most = 0;
    for (std::size_t k = n; k-- > 0;) {
      stretch[k] = stretch[k + 1] + (rng.uniform() < 0.3f ? 0.0 : rng.uniform(0.0f, 15.0f));
      unit[k] = rng.uniform() < 0.15f ? 0.0 : rng.uniform(0.0f, 20.0f);
      most += unit[k];
    }
    stretch.pop_back();
    most += stretch[0];
    const int mres = trial % 2 ? 100 : 23;
    MemoryModel mem{stretch, unit, rng.uniform(0.0f, 1.0f) * most, mres};
    const auto memory_of = [&](std::uint32_t m) {
      if (!m) return 0.0;
      double bytes = stretch[std::size_t(std::countr_zero(m))];
      for (std::size_t k = 0; k < n; ++k)
        if ((m >> k) & 1) bytes += unit[k];
      return bytes;
    };
    DPSelector<> dp(1000, DPKernel::portable);
    const Selection s = dp.select(p.dw, p.dy, p.imp, p.budget, mem);
    std::uint32_t subset = 0;
    for (std::size_t k = 0; k < n; ++k)
      if (s.mask[k]) subset |= 1u << k;
    CHECK(s.cost <= p.budget);
    CHECK(s.memory <= mem.budget);
    CHECK(s.memory == doctest::Approx(memory_of(subset)));
    CHECK(s.cost == doctest::Approx(backward_time(p, subset)));
    nonempty += subset != 0;
    // Never better than the true optimum of both constraints...
    const double real_opt = brute_force(
        p, p.budget, [&](std::uint32_t m) { return memory_of(m) <= mem.budget ? backward_time(p, m) : HUGE_VAL; });
    CHECK(s.importance <= real_opt + 1e-9);
    // ...at least the optimum of the quantized problem (times and sizes rounded up, budgets down)...
    double total = 0;
    for (std::size_t k = 0; k < n; ++k) total += p.dw[k] + p.dy[k];
    const double scale = 1000.0 / total, mscale = mres / mem.budget;
    const double quant_opt = brute_force(p, std::floor(p.budget * scale), [&](std::uint32_t m) {
      if (!m) return 0.0;
      const std::size_t f = std::size_t(std::countr_zero(m));
      double suffix = 0, t = 0, bytes = std::ceil(stretch[f] * mscale);
      for (std::size_t k = f; k < n; ++k) {
        suffix += p.dy[k];
        if ((m >> k) & 1) {
          t += std::ceil(p.dw[k] * scale);
          bytes += std::ceil(unit[k] * mscale);
        }
      }
      return bytes <= mres ? t + std::ceil(suffix * scale) : HUGE_VAL;
    });
    CHECK(s.importance >= quant_opt - 1e-9);
    // ...and the memory budget binds in a fair share of instances.
    const Selection time_only = dp.select(p.dw, p.dy, p.imp, p.budget);
    bound_by_memory += s.importance < time_only.importance - 1e-9;
    CHECK(s.importance <= time_only.importance + 1e-9);
    // Every kernel makes the same selection.
    for (const DPKernel k : kernels) {
      DPSelector<> other(1000, k);
      CHECK(other.select(p.dw, p.dy, p.imp, p.budget, mem).mask == s.mask);
    }
  }
  CHECK(nonempty > 500);
  CHECK(bound_by_memory > 300);
}

TEST_CASE("a memory budget that holds everything gives the time-only selection") {
  Rng rng(5);
  for (int trial = 0; trial < 40; ++trial) {
    const std::size_t n = 50 + rng.below(200);
    const Instance p = random_instance(rng, n);
    std::vector<double> stretch(n), unit(n);
    double total = 100;
    for (std::size_t k = 0; k < n; ++k) {
      stretch[k] = 100.0 * double(n - k) / double(n);
      unit[k] = rng.uniform(0.0f, 10.0f);
      total += unit[k];
    }
    // Four times the most any mask takes, at 1000 steps: even with every size rounded up a whole
    // step, any mask of up to 250 units fits.
    DPSelector<> dp(1000);
    const Selection time_only = dp.select(p.dw, p.dy, p.imp, p.budget);
    const Selection both = dp.select(p.dw, p.dy, p.imp, p.budget, MemoryModel{stretch, unit, 4 * total, 1000});
    CHECK(both.importance == doctest::Approx(time_only.importance).epsilon(1e-12));
    CHECK(both.cost <= p.budget);
  }
}

TEST_CASE("the memory-aware DP's tables are the size memory_table_bytes says, and are given back after each solve") {
  // Two units of t_dw 1 and t_dy 1 make 1000 quanta of 1/250 each: a budget of 2 holds 500 of
  // them, rows of 501 cells; a memory resolution of 9 makes 10 rows. A double per cell and a bit
  // per unit and cell in rows of whole 64-bit words: 10 * 501 * 8 + 2 * 10 * 8 * 8 bytes.
  DPSelector<> dp(1000);
  const std::vector<double> two{1, 1};
  CHECK(dp.memory_table_bytes(two, two, 2.0, 9) == 10 * 501 * 8 + 2 * 10 * 8 * 8);
  CHECK(dp.memory_table_bytes(two, two, 2.0, 0) * 10 == dp.memory_table_bytes(two, two, 2.0, 9));  // linear in rows
  CHECK(dp.memory_table_bytes(two, two, -1.0, 9) == 0);
  CHECK(dp.retained_bytes() == 0);

  // 200 units at the full resolutions: tables of about 17 MB, none of it kept.
  Rng rng(17);
  const Instance p = random_instance(rng, 200);
  std::vector<double> stretch(200), unit(200);
  double total = 0;
  for (std::size_t k = 0; k < 200; ++k) {
    stretch[k] = double(200 - k);
    unit[k] = rng.uniform(1.0f, 10.0f);
    total += unit[k];
  }
  const MemoryModel mem{stretch, unit, total / 3, 1000};
  const std::int64_t table = dp.memory_table_bytes(p.dw, p.dy, p.budget, 1000);
  CHECK(table > 4'000'000);
  const auto in_use = [] {
    const struct mallinfo2 m = mallinfo2();
    return std::int64_t(m.uordblks + m.hblkhd);  // heap chunks and mapped blocks in use
  };
  const std::int64_t before = in_use();
  const Selection s = dp.select(p.dw, p.dy, p.imp, p.budget, mem);
  CHECK(s.earliest >= 0);
  CHECK(s.memory <= mem.budget);
  CHECK(dp.retained_bytes() < 64 * 1024);  // the per-unit scratch only
  CHECK(in_use() - before < 64 * 1024);    // as the allocator sees it
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
  SUBCASE("a memory budget below what any unit needs gives an empty mask; zero sizes fit a zero budget") {
    const std::vector<double> stretch{4, 2, 1}, unit{1, 1, 1};
    const auto s = dp.select(dw, dy, imp, 100.0, MemoryModel{stretch, unit, 1.5});
    CHECK(s.earliest == -1);
    const auto t = dp.select(dw, dy, imp, 100.0, MemoryModel{stretch, unit, 2.0});  // unit 2 alone: 1 + 1
    CHECK(t.mask == std::vector<bool>{false, false, true});
    CHECK(t.memory == 2.0);
    const std::vector<double> huge{1e300, 0.5, 0.5};  // far beyond the budget: never selected
    CHECK(dp.select(dw, dy, imp, 100.0, MemoryModel{stretch, huge, 10.0}).mask[0] == false);
    const std::vector<double> none{0, 0, 0};
    CHECK(dp.select(dw, dy, imp, 100.0, MemoryModel{none, none, 0.0}).mask == std::vector<bool>{true, true, true});
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
    const std::vector<double> sizes{1, 1, 1}, bad_sizes{1, -2, 1};
    CHECK_THROWS_WITH_AS(dp.select(dw, dy, imp, 5, MemoryModel{bad_sizes, sizes, 10}), doctest::Contains("stretch[1]"),
                         UsageError);
    CHECK_THROWS_WITH_AS(dp.select(dw, dy, imp, 5, MemoryModel{sizes, short_list, 10}),
                         doctest::Contains("one stretch and one unit entry per unit"), UsageError);
    CHECK_THROWS_WITH_AS(dp.select(dw, dy, imp, 5, MemoryModel{sizes, sizes, std::nan("")}),
                         doctest::Contains("memory budget is NaN"), UsageError);
#ifndef __x86_64__
    CHECK_THROWS_AS(DPSelector<>(1000, DPKernel::avx2), UsageError);
#endif
  }
}

}  // namespace method_dp_selector_test
