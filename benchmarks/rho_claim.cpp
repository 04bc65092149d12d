// The claim, measured: profile a model (batch 4, 224x224, random weights), score
// its units with the loss-drop metric on a random batch, select by DP for each
// rho, run training steps under that selection and compare the measured step
// time with full training's. Also prints each plan's activation arena next to
// the full plan's. Usage: rho_claim [model] [threads] [steps] [input_size]
#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

#include "elastic/method/dp_selector.hpp"
#include "elastic/method/importance_evaluator.hpp"
#include "elastic/method/timing_profiler.hpp"
#include "elastic/models/zoo.hpp"

using namespace elastic;

int main(int argc, char** argv) {
  const std::string name = argc > 1 ? argv[1] : "resnet50";
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2, steps = argc > 3 ? std::atoi(argv[3]) : 10;
  const std::int64_t size = argc > 4 ? std::atoll(argv[4]) : 224;
  try {
    Context ctx(threads);
    Model m = build_model(name, ctx, {.num_classes = 100, .input_size = size, .batch = 4});
    Rng rng(7);
    Tensor x(m.input_shape);
    for (auto& v : x.span()) v = rng.normal();
    m.graph->write(m.images, x);
    std::vector<std::int32_t> labels;
    for (int i = 0; i < 4; ++i) labels.push_back(static_cast<std::int32_t>(rng.below(100)));
    m.loss_node().set_labels(labels);
    const auto units = selection_units(*m.graph);
    const std::vector<bool> all(m.params().size(), true);
    const Profile p = TimingProfiler<>({.warmup = 3, .repeats = 10}).run(m, ctx.threads(), all);
    SGDW opt;
    const auto importance = ImportanceEvaluator<>().evaluate(m, opt, 1e-4f, ImportanceMetric::loss_drop, 0, all);

    const auto step_ms = [&](const std::vector<bool>& mask) {
      m.graph->select(mask);
      std::vector<double> ms;
      for (int i = 0; i < steps + 2; ++i) {
        Stopwatch sw;
        m.graph->set_step(static_cast<std::uint64_t>(i));
        m.graph->forward(true);
        m.graph->backward();
        opt.step(m.params(), mask, 1e-4f);
        if (i >= 2) ms.push_back(sw.elapsed_ms());
      }
      double mean = 0;
      for (double v : ms) mean += v;
      return mean / double(ms.size());
    };
    const double full = step_ms(all);
    const std::int64_t full_arena = m.graph->plan_arena_bytes();
    fmt::print("{}: {} units, batch 4, {}x{}, {} threads; profile T_fwd {:.1f} ms, T_b(all) {:.1f} ms; "
               "measured full step {:.1f} ms (mean of {}), activation arena {:.1f} MiB\n",
               name, units.size(), size, size, ctx.threads(), p.t_fwd, p.t_bwd_full(), full, steps,
               double(full_arena) / (1 << 20));
    fmt::print("{:>5} {:>9} {:>10} {:>11} {:>9} {:>8} {:>14}\n", "rho", "selected", "predicted", "step ms", "measured",
               "error", "arena MiB");
    DPSelector<> dp;
    for (double rho : {0.4, 0.5, 0.6, 0.7}) {
      const double budget = rho * (p.t_fwd + p.t_bwd_full()) - p.t_fwd;
      const Selection s = dp.select(p.t_dw, p.t_dy, importance, budget);
      const auto mask = param_mask(units, s.mask, m.params().size());
      const double ms = step_ms(mask);
      const double predicted = (p.t_fwd + s.cost) / (p.t_fwd + p.t_bwd_full());
      fmt::print("{:5.2f} {:9} {:10.3f} {:11.1f} {:9.3f} {:+8.3f} {:8.1f} ({:3.0f}%)\n", rho,
                 std::count(s.mask.begin(), s.mask.end(), true), predicted, ms, ms / full, ms / full - rho,
                 double(m.graph->plan_arena_bytes()) / (1 << 20),
                 100.0 * double(m.graph->plan_arena_bytes()) / double(full_arena));
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
