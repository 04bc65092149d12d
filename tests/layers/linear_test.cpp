#include "elastic/layers/linear.hpp"

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_linear_test {

using namespace elastic;

TEST_CASE("linear matches x W^T + b for 2-D and token-wise 3-D inputs, with finite-difference gradients") {
  struct Case {
    Shape input;
    LinearOptions o;
  };
  const Case cases[] = {
      {{3, 13}, {.in_features = 13, .out_features = 7}},
      {{3, 13}, {.in_features = 13, .out_features = 7, .bias = false}},
      {{3, 5, 11}, {.in_features = 11, .out_features = 6}},
      {{3, 7}, {.in_features = 7, .out_features = 13}},
      {{2, 4, 6}, {.in_features = 6, .out_features = 6}},
  };
  for (const auto& c : cases) {
    CAPTURE(to_string(c.input));
    CAPTURE(c.o.bias);
    Context ctx(2);
    Graph g(ctx);
    const auto x = g.input("x", c.input, true);
    const auto y = g.add<Linear>({x}, "fc", c.o);
    g.finalize(2);
    const Tensor in = testing::random_input(g, x, 3);
    g.forward(true);
    const Tensor out = g.read(y);
    const auto& w = g.params()[0];
    const std::int64_t rows = in.numel() / c.o.in_features;
    double worst = 0;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t o = 0; o < c.o.out_features; ++o) {
        double acc = c.o.bias ? g.params()[1].value[o] : 0.0;
        for (std::int64_t i = 0; i < c.o.in_features; ++i)
          acc += double(in[r * c.o.in_features + i]) * w.value[o * c.o.in_features + i];
        worst = std::max(worst, std::abs(acc - out[r * c.o.out_features + o]));
      }
    CHECK(worst < 1e-5);
    const auto res = testing::check_gradients(g, {x}, y);
    CHECK_MESSAGE(res.ok, res.report);
    CHECK(res.checked > 40);
  }
}

TEST_CASE("linear params take custom names and torch shapes; a feature mismatch names the layer") {
  Context ctx(1);
  Graph g(ctx);
  const auto x = g.input("x", {2, 4, 8});
  g.add<Linear>(
      {x}, "attn",
      LinearOptions{
          .in_features = 8, .out_features = 24, .weight_name = "in_proj_weight", .bias_name = "in_proj_bias"});
  g.finalize();
  CHECK(g.params()[0].name == "attn.in_proj_weight");
  CHECK(g.params()[0].shape == Shape{24, 8});
  CHECK(g.params()[1].name == "attn.in_proj_bias");
  Graph bad(ctx);
  const auto z = bad.input("z", {2, 5});
  bad.add<Linear>({z}, "heads.head", LinearOptions{.in_features = 6, .out_features = 2});
  CHECK_THROWS_WITH_AS(bad.finalize(), doctest::Contains("heads.head"), Error);
}

}  // namespace layers_linear_test
