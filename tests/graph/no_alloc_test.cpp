#include <doctest/doctest.h>

#include "elastic/graph/graph.hpp"
#include "elastic/layers/add.hpp"
#include "elastic/layers/conv.hpp"
#include "elastic/testing/gradcheck.hpp"
#include "support/alloc_counter.hpp"

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
  auto c1 = g.add<Conv2d>({x}, "c1", Conv2dOptions{.in_channels = 8, .out_channels = 16, .kernel_h = 3, .kernel_w = 3, .padding = 1});
  auto c2 = g.add<Conv2d>({c1}, "c2", Conv2dOptions{.in_channels = 16, .out_channels = 16, .kernel_h = 3, .kernel_w = 3, .padding = 1, .groups = 16});
  auto s = g.add<Add>({c1, c2}, "add");
  auto y = g.add<Conv2d>({s}, "c3", Conv2dOptions{.in_channels = 16, .out_channels = 5, .kernel_h = 1, .kernel_w = 1, .stride = 2});
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
