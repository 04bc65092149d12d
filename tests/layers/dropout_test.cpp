#include <doctest/doctest.h>

#include "elastic/layers/dropout.hpp"
#include "elastic/testing/gradcheck.hpp"

using namespace elastic;

TEST_CASE("dropout: identity in inference, a scaled p-mask in training that depends on the step") {
  Context ctx(2);
  Graph g(ctx);
  const auto x = g.input("x", {4, 25000});
  const auto y = g.add<Dropout>({x}, "drop", 0.3f, 11);
  g.finalize();
  const Tensor in = testing::random_input(g, x, 1, 0.5f, 1.5f);
  g.forward(false);
  const Tensor eval = g.read(y);
  for (std::int64_t i = 0; i < in.numel(); i += 97) CHECK(eval[i] == in[i]);

  g.set_step(5);
  g.forward(true);
  const Tensor a = g.read(y);
  std::int64_t dropped = 0;
  for (std::int64_t i = 0; i < in.numel(); ++i) {
    if (a[i] == 0.0f) ++dropped;
    else CHECK_MESSAGE(std::abs(a[i] - in[i] / 0.7f) < 1e-5f, i);
  }
  CHECK(std::abs(double(dropped) / double(in.numel()) - 0.3) < 0.01);
  g.forward(true);
  const Tensor again = g.read(y);
  CHECK(std::equal(a.span().begin(), a.span().end(), again.span().begin()));
  g.set_step(6);
  g.forward(true);
  const Tensor other = g.read(y);
  std::int64_t differ = 0;
  for (std::int64_t i = 0; i < in.numel(); ++i) differ += (a[i] == 0.0f) != (other[i] == 0.0f);
  CHECK(differ > in.numel() / 5);
}

TEST_CASE("dropout gradients match finite differences at a fixed step") {
  Context ctx(2);
  Graph g(ctx);
  const auto x = g.input("x", {3, 5, 7, 6}, true);
  const auto y = g.add<Dropout>({x}, "drop", 0.5f, 3);
  g.finalize();
  g.set_step(2);
  testing::random_input(g, x, 7);
  const auto res = testing::check_gradients(g, {x}, y, {.max_checks = 200, .training = true});
  CHECK_MESSAGE(res.ok, res.report);
}

TEST_CASE("dropout probability must be in [0, 1)") {
  CHECK_THROWS_WITH_AS(Dropout("classifier.0", 1.0f), doctest::Contains("classifier.0"), Error);
  CHECK_THROWS_AS(Dropout("d", -0.1f), Error);
  CHECK_NOTHROW(Dropout("d", 0.0f));
}
