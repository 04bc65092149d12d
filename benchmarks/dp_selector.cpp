// Google Benchmark of the DP selector over the unit counts of the paper's
// models and beyond (N = 52, 158, 214, 1000) at time resolutions 1000 and 10000.
#include "elastic/method/dp_selector.hpp"

#include <benchmark/benchmark.h>

#include "elastic/core/random.hpp"

namespace {
void BM_DPSelect(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto resolution = static_cast<std::int32_t>(state.range(1));
  elastic::Rng rng(42);
  std::vector<double> dw(n), dy(n), imp(n);
  double total = 0;
  for (std::size_t k = 0; k < n; ++k) {
    dw[k] = rng.uniform(0.01f, 2.0f);
    dy[k] = rng.uniform(0.01f, 1.5f);
    imp[k] = rng.uniform(-0.1f, 1.0f);
    total += dw[k] + dy[k];
  }
  elastic::DPSelector<> dp(resolution);
  for (auto _ : state) {
    auto s = dp.select(dw, dy, imp, 0.5 * total);
    benchmark::DoNotOptimize(s);
  }
  state.SetLabel("budget = half the full backward");
}
BENCHMARK(BM_DPSelect)
    ->ArgsProduct({{52, 158, 214, 1000}, {1000, 10000}})
    ->ArgNames({"N", "T"})
    ->Unit(benchmark::kMicrosecond);
}  // namespace

BENCHMARK_MAIN();
