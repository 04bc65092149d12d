// Soak run: 2000 steps of elastic training on Fashion-MNIST (MobileNetV2,
// 32x32, batch 32, rho 0.5) with re-selection every 100 steps, printing the
// resident memory every 100 steps. The claim: memory after step 200 and after
// step 2000 differ by less than 2% (nothing grows per step or per selection).
// With a memory budget (MiB) the selections keep within it: each line shows the selection's
// predicted peak beside the RSS, and the end the gap between them (what the memory model does
// not see: it must not grow) and the largest RSS against the budget.
// Usage: soak [steps] [threads] [memory_budget_mib]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>

#include <fmt/format.h>

#include "elastic/core/resident.hpp"
#include "elastic/data.hpp"
#include "elastic/method/timing_profiler.hpp"
#include "elastic/models/zoo.hpp"
#include "elastic/train/trainer.hpp"

using namespace elastic;

namespace {

double rss_mib() { return double(resident_bytes()) / kMiB; }

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 2000;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
  const std::optional<double> budget = argc > 3 ? std::optional<double>(std::atof(argv[3])) : std::nullopt;
  try {
    if (budget) return_freed_memory();  // as `elastic train --memory_budget` does
    const data::Dataset d = data::open_dataset("fashion_mnist", "");
    Context ctx(threads);
    Model m = build_model("mobilenetv2", ctx, {.num_classes = 10, .input_size = 32, .batch = 32});
    m.set_batch_stats(true);
    data::Loader loader(d.train, data::loader_options_for(m, true, 1));
    data::CappedLoader source{loader, 100};
    loader.start_epoch(0, false);
    loader.load(m, 0);
    const Profile p = TimingProfiler<>().run(m, ctx.threads(), std::vector<bool>(m.params().size(), true));
    const int epochs = (steps + 99) / 100;
    Trainer t(m,
              {.type = TrainType::elastic_training,
               .num_epochs = epochs,
               .interval = 1,
               .rho = 0.5,
               .learning_rate = 0.01f,
               .memory_budget_mib = budget},
              100, p);
    t.log = nullptr;
    std::vector<double> rss, gap;  // gap: RSS less the selection's predicted peak, per 100 steps
    t.on_step = [&](std::uint64_t step, double, std::int64_t, std::int64_t) {
      if ((step + 1) % 100 == 0) rss.push_back(rss_mib());
    };
    fmt::print("step   RSS MiB   selected units   train loss\n");
    for (int e = 0; e < epochs; ++e) {
      const EpochRecord r = t.train_epoch(source, e);
      fmt::print("{:5}   {:7.1f}   {:14}   {:.4f}{}\n", t.step(), rss.back(),
                 t.selections().back().selected_units.size(), r.train.loss(),
                 budget ? fmt::format("   predicted {:.1f} MiB", t.selections().back().memory_mib) : "");
      if (budget) gap.push_back(rss.back() - t.selections().back().memory_mib);
      std::fflush(stdout);
    }
    const double at200 = rss.size() > 1 ? rss[1] : rss.front(), last = rss.back();
    fmt::print("RSS after step 200: {:.1f} MiB, after step {}: {:.1f} MiB, difference {:+.2f}% ({} selections)\n",
               at200, t.step(), last, 100 * (last - at200) / at200, t.selections().size());
    if (budget) {
      fmt::print("RSS less the predicted peak: {:+.1f} MiB after step 100, {:+.1f} after step {}, {:+.1f} at most\n",
                 gap.front(), gap.back(), t.step(), *std::max_element(gap.begin(), gap.end()));
      fmt::print(
          "memory budget {:.1f} MiB: largest RSS in training {:.1f} MiB, largest predicted {:.1f} MiB; the "
          "process's peak {:.1f} MiB (the profiling before training included)\n",
          *budget, *std::max_element(rss.begin(), rss.end()),
          std::max_element(t.selections().begin(), t.selections().end(),
                           [](const auto& a, const auto& b) { return a.memory_mib < b.memory_mib; })
              ->memory_mib,
          double(peak_resident_bytes()) / kMiB);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
