#include <doctest/doctest.h>

#include "elastic/layers/flatten.hpp"
#include "elastic/testing/gradcheck.hpp"

using namespace elastic;

TEST_CASE("flatten gives torch's (c, h, w) order from channels-last images") {
  Context ctx(2);
  Graph g(ctx);
  const auto x = g.input("x", {3, 5, 4, 3}, true);
  const auto y = g.add<Flatten>({x}, "flatten");
  g.finalize();
  REQUIRE(g.shape(y) == Shape{3, 60});
  const Tensor in = testing::random_input(g, x, 1);
  g.forward(true);
  const Tensor out = g.read(y);
  for (std::int64_t i = 0; i < in.numel(); ++i) CHECK(out[i] == in[i]);  // NCHW order is torch's order
  const auto res = testing::check_gradients(g, {x}, y);
  CHECK_MESSAGE(res.ok, res.report);
}

TEST_CASE("flatten of a 3-D input merges the trailing dims") {
  Context ctx(2);
  Graph g(ctx);
  const auto x = g.input("x", {3, 4, 5}, true);
  const auto y = g.add<Flatten>({x}, "flatten");
  g.finalize();
  REQUIRE(g.shape(y) == Shape{3, 20});
  const Tensor in = testing::random_input(g, x, 2);
  g.forward(true);
  const Tensor out = g.read(y);
  for (std::int64_t i = 0; i < in.numel(); ++i) CHECK(out[i] == in[i]);
  const auto res = testing::check_gradients(g, {x}, y);
  CHECK_MESSAGE(res.ok, res.report);
}
