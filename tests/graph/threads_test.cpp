// Graph::set_threads: the kernels' thread count changes between steps without
// changing what a step computes (beyond the order of floating-point sums).
#include <cmath>
#include <vector>

#include <omp.h>

#include <doctest/doctest.h>

#include "elastic/core/random.hpp"
#include "elastic/models/zoo.hpp"
#include "elastic/optim/optimizer.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace graph_threads_test {

using namespace elastic;

namespace {
// MobileNetV2 at 32x32 (depthwise and pointwise convolutions, batch norm with
// its per-thread gradient sums) trained as the trainer trains: frozen weights
// reused, gradients streamed, updates inside backward, half the params frozen.
struct Run {
  Context ctx{2};
  Model m = build_model("mobilenetv2", ctx, {.num_classes = 10, .input_size = 32, .batch = 4});
  SGDW opt;
  std::vector<bool> mask;
  std::vector<float> losses;

  Run() {
    Rng rng(7);
    for (auto& v : m.params().value_arena()) v = 0.05f * rng.normal();
    for (std::size_t k = 0; k < m.params().size(); ++k) mask.push_back(k % 2 == 0);
    m.graph->select(mask);
    m.graph->reuse_frozen_weights(true);
    m.graph->stream_grads(true);
  }
  // Step s on batch s (written before `before_forward` runs).
  template <class F>
  void step(int s, F before_forward) {
    Rng rng(100 + std::uint64_t(s));
    Tensor x(m.input_shape);
    for (auto& v : x.span()) v = rng.normal();
    m.graph->write(m.images, x);
    std::vector<std::int32_t> labels;
    for (int i = 0; i < 4; ++i) labels.push_back(std::int32_t(rng.below(10)));
    m.loss_node().set_labels(labels);
    before_forward();
    m.graph->set_step(std::uint64_t(s));
    m.graph->forward(true);
    losses.push_back(float(m.loss_node().loss()));
    const auto& topology = m.graph->topology();
    m.graph->backward([&](int node) { opt.step(m.params(), topology.nodes[std::size_t(node)].params, mask, 0.05f); });
  }
};

double relative_l2(std::span<const float> a, std::span<const float> b) {
  double d = 0, n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    d += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    n += double(b[i]) * b[i];
  }
  return std::sqrt(d / n);
}
}  // namespace

TEST_CASE("training across set_threads (2 -> 1 -> 2) follows a run that keeps 2 threads") {
  Run fixed, switched;
  const auto start = fixed.m.params().value_arena();
  const std::vector<float> w0(start.begin(), start.end());
  std::vector<int> threads_seen;
  for (int s = 0; s < 8; ++s) {
    fixed.step(s, [] {});
    // Between loading the batch and its forward, as the trainer may switch.
    switched.step(s, [&] {
      if (s == 2) switched.m.graph->set_threads(1);
      if (s == 5) switched.m.graph->set_threads(2);
      threads_seen.push_back(omp_get_max_threads());
    });
  }
  CHECK(threads_seen == std::vector<int>{2, 2, 1, 1, 1, 2, 2, 2});
  CHECK(switched.ctx.threads() == 2);
  // Same losses and weights up to the order of sums: a node left unbound, a
  // transient without its buffer or a frozen weight not re-laid-out after the
  // new setup would differ by far more (or crash).
  for (int s = 0; s < 8; ++s)
    CHECK(switched.losses[std::size_t(s)] == doctest::Approx(fixed.losses[std::size_t(s)]).epsilon(1e-4));
  CHECK(relative_l2(switched.m.params().value_arena(), fixed.m.params().value_arena()) < 1e-5);
  // The updates inside backward moved the weights (the losses differ anyway: each step has a
  // batch of its own), so the comparison above compares trained weights.
  CHECK(relative_l2(fixed.m.params().value_arena(), w0) > 1e-3);
}

TEST_CASE("set_threads to the count in force changes nothing; a bad count is a usage error") {
  Run run;
  run.step(0, [] {});
  run.m.graph->set_threads(2);
  run.step(1, [] {});
  Run ref;
  ref.step(0, [] {});
  ref.step(1, [] {});
  CHECK(run.losses == ref.losses);  // same count: no new setup, so bit-identical
  CHECK_THROWS_AS(run.m.graph->set_threads(-1), UsageError);
}

}  // namespace graph_threads_test
