// Google Benchmark of the DP selector over the unit counts of the paper's
// models and beyond (N = 52, 158, 214, 1000) at time resolutions 1000 and 10000, with the
// kernel the CPU's best (0), the portable loop (1) and AVX2 (2).
#include "elastic/method/dp_selector.hpp"

#include <optional>
#include <string>

#include <benchmark/benchmark.h>

#include "elastic/core/random.hpp"

namespace {
void BM_DPSelect(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto resolution = static_cast<std::int32_t>(state.range(1));
  const auto kernel = static_cast<elastic::DPKernel>(state.range(2));
  elastic::Rng rng(42);
  std::vector<double> dw(n), dy(n), imp(n);
  double total = 0;
  for (std::size_t k = 0; k < n; ++k) {
    dw[k] = rng.uniform(0.01f, 2.0f);
    dy[k] = rng.uniform(0.01f, 1.5f);
    imp[k] = rng.uniform(-0.1f, 1.0f);
    total += dw[k] + dy[k];
  }
  std::optional<elastic::DPSelector<>> dp;
  try {
    dp.emplace(resolution, kernel);
  } catch (const elastic::UsageError& e) {
    state.SkipWithError(e.what());
    return;
  }
  for (auto _ : state) {
    auto s = dp->select(dw, dy, imp, 0.5 * total);
    benchmark::DoNotOptimize(s);
  }
  state.SetLabel(std::string(dp->kernel()) + ", budget = half the full backward");
}
// With a memory budget as well: the time x memory table (memory resolution M), budgets at
// half the full backward and half the most memory any mask takes.
void BM_DPSelectMemory(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto resolution = static_cast<std::int32_t>(state.range(1));
  const auto memory_resolution = static_cast<std::int32_t>(state.range(2));
  elastic::Rng rng(42);
  std::vector<double> dw(n), dy(n), imp(n), stretch(n + 1, 0.0), unit(n);
  double total = 0, most = 0;
  for (std::size_t k = n; k-- > 0;) {
    dw[k] = rng.uniform(0.01f, 2.0f);
    dy[k] = rng.uniform(0.01f, 1.5f);
    imp[k] = rng.uniform(-0.1f, 1.0f);
    stretch[k] = stretch[k + 1] + rng.uniform(0.0f, 3.0f);
    unit[k] = rng.uniform(0.0f, 4.0f);
    total += dw[k] + dy[k];
    most += unit[k];
  }
  most += stretch[0];
  elastic::DPSelector<> dp(resolution);
  const elastic::MemoryModel memory{std::span(stretch).first(n), unit, 0.5 * most, memory_resolution};
  for (auto _ : state) {
    auto s = dp.select(dw, dy, imp, 0.5 * total, memory);
    benchmark::DoNotOptimize(s);
  }
  state.SetLabel(std::string(dp.kernel()) + ", budgets = half the full backward, half the most memory");
}

BENCHMARK(BM_DPSelect)
    ->ArgsProduct({{52, 158, 214, 1000},
                   {1000, 10000},
                   {int(elastic::DPKernel::best), int(elastic::DPKernel::portable), int(elastic::DPKernel::avx2)}})
    ->ArgNames({"N", "T", "kernel"})
    ->Unit(benchmark::kMicrosecond);

BENCHMARK(BM_DPSelectMemory)
    ->ArgsProduct({{52, 214}, {1000}, {100, 1000}})
    ->ArgNames({"N", "T", "M"})
    ->Unit(benchmark::kMillisecond);
}  // namespace

BENCHMARK_MAIN();
