#include <doctest/doctest.h>

#include "elastic/graph/graph.hpp"
#include "elastic/layers/add.hpp"
#include "elastic/layers/conv.hpp"
#include "elastic/models/resnet.hpp"
#include "elastic/models/small_cnn.hpp"
#include "elastic/models/vit.hpp"
#include "elastic/optim/optimizer.hpp"
#include "elastic/testing/gradcheck.hpp"
#include "support/alloc_counter.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace graph_no_alloc_test {

using namespace elastic;

// oneDNN 2.6 builds a small argument map inside every primitive execution (a
// few allocations of tens of bytes each, whatever the caller does). So the
// property checked is: a warm step allocates the same small amount every time
// and never anything the size of a buffer, which any per-step allocation of
// ours (activations, workspaces, containers of per-element data) would break.

TEST_CASE("the allocation counter sees allocations") {
  alloc_counter::start();
  auto* v = new std::vector<float>(1000);
  alloc_counter::stop();
  delete v;
  CHECK(alloc_counter::count >= 1);
  CHECK(alloc_counter::largest >= 4000);
}

TEST_CASE("a warm training step allocates no buffers and the same small amount every step") {
  Context ctx(2);
  Graph g(ctx);
  auto x = g.input("x", {4, 8, 16, 12});
  auto c1 = g.add<Conv2d>(
      {x}, "c1", Conv2dOptions{.in_channels = 8, .out_channels = 16, .kernel_h = 3, .kernel_w = 3, .padding = 1});
  auto c2 = g.add<Conv2d>(
      {c1}, "c2",
      Conv2dOptions{.in_channels = 16, .out_channels = 16, .kernel_h = 3, .kernel_w = 3, .padding = 1, .groups = 16});
  auto s = g.add<Add>({c1, c2}, "add");
  auto y = g.add<Conv2d>(
      {s}, "c3", Conv2dOptions{.in_channels = 16, .out_channels = 5, .kernel_h = 1, .kernel_w = 1, .stride = 2});
  g.finalize(1);
  testing::random_input(g, x, 1);
  g.write_grad(y, Tensor(g.shape(y), 1.0f));
  std::vector<bool> partial(g.params().size(), false);
  partial.back() = partial[partial.size() - 2] = true;
  for (const auto& mask : {std::vector<bool>(g.params().size(), true), partial}) {
    g.select(mask);
    for (int i = 0; i < 3; ++i) {  // warm-up
      g.forward(true);
      g.backward();
    }
    std::vector<long> counts;
    for (int i = 0; i < 4; ++i) {
      g.set_step(static_cast<std::uint64_t>(i));
      alloc_counter::start();
      g.forward(true);
      g.backward();
      alloc_counter::stop();
      counts.push_back(alloc_counter::count);
      CHECK(alloc_counter::largest <= 256);
      CHECK(alloc_counter::bytes <= 16384);
    }
    MESSAGE("allocations per step by oneDNN's execute: ", counts[0]);
    CHECK(std::equal(counts.begin() + 1, counts.end(), counts.begin()));
  }
}

namespace {
// Runs warm steps of `step` and checks the allocation property above, with one
// more allowance: oneDNN 2.6's sgemm driver (behind inner product, i.e. every
// Linear) allocates and frees its packing workspace inside each call, a block
// bounded by its blocking sizes (tens of KiB here), not by any tensor's size.
template <class Step>
void check_steady(Step step) {
  for (int i = 0; i < 3; ++i) step(i);
  std::vector<long> counts;
  long largest = 0;
  for (int i = 3; i < 7; ++i) {
    alloc_counter::start();
    step(i);
    alloc_counter::stop();
    counts.push_back(alloc_counter::count);
    largest = std::max(largest, long(alloc_counter::largest));
    CHECK(alloc_counter::largest <= 128 * 1024);
  }
  MESSAGE("allocations per step: ", counts[0], ", largest ", largest);
  CHECK(std::equal(counts.begin() + 1, counts.end(), counts.begin()));
}
}  // namespace

TEST_CASE("a warm training step of every layer type, with the optimizer, allocates no buffers") {
  Context ctx(2);
  SUBCASE("small CNN: conv, batch norm in both modes, relu, pools, dropout, linear, loss, SGDW") {
    Model m = small_cnn(ctx, {.batch = 8, .width1 = 8, .width2 = 16});
    SGDW opt;
    std::vector<std::int32_t> labels(8, 3);
    m.loss_node().set_labels(labels);
    const std::vector<bool> all(m.params().size(), true);
    for (bool batch_stats : {true, false}) {
      m.set_batch_stats(batch_stats);
      check_steady([&](int i) {
        m.graph->set_step(static_cast<std::uint64_t>(i));
        m.graph->forward(true);
        m.graph->backward();
        opt.step(m.params(), all, 0.1f);
      });
    }
  }
  SUBCASE("transformer block: layer norm, attention, gelu, tokens, Adam") {
    Model m = vit(ctx, {.num_classes = 5, .input_size = 32, .batch = 2},
                  {.patch = 16, .hidden = 24, .layers = 2, .heads = 3, .mlp = 48});
    Adam opt;
    m.loss_node().set_labels(std::vector<std::int32_t>{1, 4});
    const std::vector<bool> all(m.params().size(), true);
    check_steady([&](int i) {
      m.graph->set_step(static_cast<std::uint64_t>(i));
      m.graph->forward(true);
      m.graph->backward();
      opt.step(m.params(), all, 0.01f);
    });
  }
  SUBCASE("the trainer's step: reused frozen weights, streamed gradients, updates inside backward") {
    Model m = resnet50(ctx, {.num_classes = 5, .input_size = 32, .batch = 2});
    SGDW opt;
    m.loss_node().set_labels(std::vector<std::int32_t>{1, 4});
    std::vector<bool> mask(m.params().size(), false);
    for (std::size_t k = mask.size() / 2; k < mask.size(); ++k) mask[k] = true;
    m.graph->select(mask);
    m.graph->reuse_frozen_weights(true);
    m.graph->stream_grads(true);
    const auto& topology = m.graph->topology();
    check_steady([&](int i) {
      m.graph->set_step(static_cast<std::uint64_t>(i));
      m.graph->forward(true);
      m.graph->backward([&](int node) { opt.step(m.params(), topology.nodes[std::size_t(node)].params, mask, 0.1f); });
    });
  }
}

}  // namespace graph_no_alloc_test
