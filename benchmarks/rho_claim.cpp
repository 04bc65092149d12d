// The claim, measured through the Trainer: elastic training at rho takes rho of
// full training's time. The model (random weights, frozen batch-norm
// statistics, 10 classes) is profiled once as the trainer steps it; then for
// each rho, full training and elastic training (one probe and selection, the
// time controller on) run the same `steps` steps of random batches, as
// alternating runs (full, elastic, full, elastic, ...: this VM's speed
// drifts), each a fresh Trainer. Per rho it prints, for the selection in
// force at the end of the last elastic run, its units, its predicted share
// (under the model as corrected when it was solved) and the trainer's own
// measured share (its windows against the corrected full step), and the
// measured share as elastic training time over full training time of a pair
// (median over the pairs), with the probes and selections and without them.
// Usage: rho_claim [model] [threads] [steps] [input_size] [batch] [pairs] [rho,rho,...]
#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

#include "elastic/method/timing_profiler.hpp"
#include "elastic/models/zoo.hpp"
#include "elastic/train/trainer.hpp"

using namespace elastic;

namespace {
// `steps` batches of random images and labels, four distinct ones in turn.
struct RandomBatches {
  std::int64_t steps;
  std::vector<Tensor> images;
  std::vector<std::vector<std::int32_t>> labels;
  RandomBatches(const Model& m, std::int64_t n) : steps(n) {
    Rng rng(7);
    for (int i = 0; i < 4; ++i) {
      Tensor x(m.input_shape);
      for (auto& v : x.span()) v = rng.normal();
      images.push_back(std::move(x));
      std::vector<std::int32_t> y;
      for (std::int64_t j = 0; j < m.batch(); ++j) y.push_back(static_cast<std::int32_t>(rng.below(10)));
      labels.push_back(std::move(y));
    }
  }
  void start_epoch(std::uint64_t, bool) {}
  std::int64_t batches(std::int64_t, bool) const { return steps; }
  std::int64_t load(Model& m, std::int64_t b) {
    const auto i = static_cast<std::size_t>(b % 4);
    m.graph->write(m.images, images[i]);
    m.loss_node().set_labels(labels[i]);
    return m.batch();
  }
};
}  // namespace

int main(int argc, char** argv) {
  const std::string name = argc > 1 ? argv[1] : "resnet50";
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
  const std::int64_t steps = argc > 3 ? std::atoll(argv[3]) : 60;
  const std::int64_t size = argc > 4 ? std::atoll(argv[4]) : 224, batch = argc > 5 ? std::atoll(argv[5]) : 4;
  const int pairs = argc > 6 ? std::atoi(argv[6]) : 2;
  std::vector<double> rhos{0.4, 0.5, 0.6, 0.7};
  if (argc > 7) {
    rhos.clear();
    for (std::string list = argv[7]; !list.empty();) {
      const auto comma = list.find(',');
      rhos.push_back(std::atof(list.substr(0, comma).c_str()));
      list = comma == std::string::npos ? "" : list.substr(comma + 1);
    }
  }
  try {
    Context ctx(threads);
    Model m = build_model(name, ctx, {.num_classes = 10, .input_size = size, .batch = batch});
    RandomBatches source(m, steps);
    source.load(m, 0);
    const auto opt = make_optimizer("", m.name, std::nullopt);
    const Profile p = TimingProfiler<>().run(m, ctx.threads(), std::vector<bool>(m.params().size(), true), *opt);
    fmt::print(
        "{}: {} units, batch {}, {}x{}, {} threads, {}; profile: forward {:.1f} ms ({:.1f} all frozen), "
        "backward {:.1f} ms, full step {:.1f} ms; {} steps a run, {} pairs a rho\n",
        name, p.units.size(), batch, size, size, ctx.threads(), p.key.optimizer, p.t_fwd, p.t_fwd_frozen,
        p.t_bwd_full(), p.full_step_ms(), steps, pairs);
    fmt::print("{:>5} {:>6} {:>10} {:>10} {:>9} {:>10} {:>9} {:>11} {:>9} {:>9}\n", "rho", "units", "predicted",
               "trainer's", "full s", "elastic s", "measured", "steps only", "-pred", "-rho");
    // Returns the run's training time and that time less its probes and selections, in s.
    const auto run = [&](TrainType type, double rho, SelectionRecord* sel) {
      Trainer t(m, {.type = type, .num_epochs = 1, .interval = 1, .rho = rho, .learning_rate = 1e-4f}, steps,
                is_elastic(type) ? std::optional<Profile>(p) : std::nullopt);
      t.log = nullptr;
      const EpochRecord rec = t.train_epoch(source, 0);
      if (sel && !t.selections().empty()) *sel = t.selections().back();
      double selecting_ms = 0;
      for (const auto& r : t.selections()) selecting_ms += r.selection_ms;
      return std::pair{rec.train_ms / 1000, (rec.train_ms - selecting_ms) / 1000};
    };
    for (const double rho : rhos) {
      std::vector<double> ratios, step_ratios, full_s, elastic_s;
      SelectionRecord last;
      for (int i = 0; i < pairs; ++i) {
        full_s.push_back(run(TrainType::full_training, rho, nullptr).first);
        SelectionRecord sel;
        const auto [elastic, steps_only] = run(TrainType::elastic_training, rho, &sel);
        elastic_s.push_back(elastic);
        last = sel;
        ratios.push_back(elastic / full_s.back());
        step_ratios.push_back(steps_only / full_s.back());
      }
      const double measured = summarize(ratios).median, steps_only = summarize(step_ratios).median;
      fmt::print("{:5.2f} {:6} {:10.3f} {:10.3f} {:9.2f} {:10.2f} {:9.3f} {:11.3f} {:+9.3f} {:+9.3f}\n", rho,
                 last.selected_units.size(), last.predicted_share, last.measured_share, summarize(full_s).median,
                 summarize(elastic_s).median, measured, steps_only, steps_only - last.predicted_share,
                 steps_only - rho);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
