#include "elastic/train/step.hpp"

#include <algorithm>
#include <cstring>

#include <doctest/doctest.h>

#include "elastic/core/random.hpp"
#include "elastic/models/small_cnn.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace train_step_test {

using namespace elastic;

namespace {
// A model of seed 5 with a fixed random batch of 28x28 images and labels.
Model model_with_batch(Context& ctx) {
  Model m = small_cnn(ctx, {.batch = 8, .num_classes = 10, .width1 = 8, .width2 = 16, .seed = 5});
  Rng rng(11);
  Tensor x(m.input_shape);
  for (auto& v : x.span()) v = rng.normal();
  m.graph->write(m.images, x);
  std::vector<std::int32_t> labels;
  for (int i = 0; i < 8; ++i) labels.push_back(static_cast<std::int32_t>(rng.below(10)));
  m.loss_node().set_labels(labels);
  return m;
}
}  // namespace

TEST_CASE("a TrainStep gives the weights of forward, a whole backward and one update of the selected params") {
  Context ctx(2);
  Model a = model_with_batch(ctx), b = model_with_batch(ctx);
  const auto& ps = a.params();
  std::vector<bool> mask(ps.size(), false);
  for (std::size_t k = ps.size() / 2; k < ps.size(); ++k) mask[k] = true;  // the top half: frozen layers below
  a.graph->select(mask);
  b.graph->select(mask);
  SGDW opt_a({.momentum = 0.9f, .weight_decay = 0.01f}), opt_b({.momentum = 0.9f, .weight_decay = 0.01f});
  std::vector<std::vector<float>> before;
  for (std::size_t k = 0; k < ps.size(); ++k) before.emplace_back(ps[k].values().begin(), ps[k].values().end());

  double loss_a = 0, loss_b = 0;
  {
    TrainStep step(a, opt_a);
    for (std::uint64_t s = 0; s < 3; ++s) loss_a = step(s, mask, 0.05f).loss();
  }
  for (std::uint64_t s = 0; s < 3; ++s) {  // the step written out: gradients kept, then one update
    b.graph->set_step(s);
    b.graph->forward(true);
    loss_b = b.loss_node().loss();
    b.graph->backward();
    opt_b.step(b.params(), mask, 0.05f);
  }
  CHECK(loss_a == loss_b);
  for (std::size_t k = 0; k < ps.size(); ++k) {
    CAPTURE(ps[k].name);
    const auto va = ps[k].values(), vb = b.params()[k].values();
    CHECK(std::memcmp(va.data(), vb.data(), va.size_bytes()) == 0);
    const bool moved = std::memcmp(va.data(), before[k].data(), va.size_bytes()) != 0;
    CHECK(moved == bool(mask[k]));  // selected params move, the others never do
  }
}

TEST_CASE("a TrainStep's around_update sees every selected node's params once per step and must update them") {
  Context ctx(1);
  Model m = model_with_batch(ctx);
  const std::vector<bool> all(m.params().size(), true);
  m.graph->select(all);
  SGDW opt;
  std::vector<int> seen(m.params().size(), 0);
  const float before = m.params()[0].values()[0];
  {
    TrainStep step(m, opt);
    step.forward(0);
    step.backward(all, 0.1f, [&](std::span<const int> ks, const auto& update) {
      for (int k : ks) ++seen[std::size_t(k)];
      update();
    });
  }
  for (int n : seen) CHECK(n == 1);
  CHECK(m.params()[0].values()[0] != before);
  // After the TrainStep, gradients are kept again (readable per param), as evaluation and probes expect.
  m.graph->forward(true);
  m.graph->backward();
  const auto& ps = m.params();
  const Param& first = ps[0];
  const Param& head = ps[ps.size() - 2];  // the first param of the last node (streamed, both would start one buffer)
  REQUIRE(first.node != head.node);
  CHECK(first.grad != head.grad);
  CHECK(std::any_of(first.grads().begin(), first.grads().end(), [](float g) { return g != 0; }));
}

}  // namespace train_step_test
