// Times a model's forward pass and full training step (forward, backward of
// every param, SGDW update) at a given batch and input size, and prints one
// JSON object: the engine's half of benchmarks/compare_pytorch.
// Usage: model_step MODEL [batch] [input_size] [threads] [steps] [warmup]
#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

#include "elastic/core/timer.hpp"
#include "elastic/models/zoo.hpp"
#include "elastic/optim/optimizer.hpp"

using namespace elastic;

namespace {
template <class F>
Summary measure(int warmup, int steps, F run) {
  for (int i = 0; i < warmup; ++i) run();
  std::vector<double> ms;
  for (int i = 0; i < steps; ++i) {
    Stopwatch sw;
    run();
    ms.push_back(sw.elapsed_ms());
  }
  return summarize(ms);
}

std::string json(const Summary& s) {
  return fmt::format(R"({{"median_ms": {:.3f}, "min_ms": {:.3f}, "max_ms": {:.3f}}})", s.median, s.min, s.max);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: model_step MODEL [batch] [input_size] [threads] [steps] [warmup]\n");
    return 2;
  }
  const std::string name = argv[1];
  const std::int64_t batch = argc > 2 ? std::atoll(argv[2]) : 4, size = argc > 3 ? std::atoll(argv[3]) : 224;
  const int threads = argc > 4 ? std::atoi(argv[4]) : 2, steps = argc > 5 ? std::atoi(argv[5]) : 10;
  const int warmup = argc > 6 ? std::atoi(argv[6]) : 3;
  try {
    Context ctx(threads);
    Model m = build_model(name, ctx, {.num_classes = 1000, .input_size = size, .batch = batch});
    Rng rng(1);
    Tensor x(m.input_shape);
    for (auto& v : x.span()) v = rng.normal();
    m.graph->write(m.images, x);
    std::vector<std::int32_t> labels;
    for (std::int64_t i = 0; i < batch; ++i) labels.push_back(static_cast<std::int32_t>(rng.below(1000)));
    m.loss_node().set_labels(labels);
    SGDW opt({.initial_lr = 1e-4f});
    const std::vector<bool> all(m.params().size(), true);
    m.graph->select(all);
    std::uint64_t step = 0;
    const Summary fwd = measure(warmup, steps, [&] { m.graph->forward(true); });
    const Summary train = measure(warmup, steps, [&] {
      m.graph->set_step(step++);
      m.graph->forward(true);
      m.graph->backward();
      opt.step(m.params(), all, 1e-4f);
    });
    fmt::print(R"({{"model": "{}", "batch": {}, "input_size": {}, "threads": {}, "params": {}, "forward": {}, "train_step": {}}})"
               "\n",
               name, batch, size, ctx.threads(), m.params().total_elements(), json(fwd), json(train));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
