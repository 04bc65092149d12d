#include "elastic/layers/mul.hpp"

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_mul_test {

using namespace elastic;

TEST_CASE("mul multiplies elementwise, broadcasting an (N, C, 1, 1) gate over the image, with exact gradients") {
  for (const Shape& b_shape : {Shape{2, 5, 4, 3}, Shape{2, 5, 1, 1}}) {
    CAPTURE(to_string(b_shape));
    Context ctx(2);
    Graph g(ctx);
    const ValueId a = g.input("a", {2, 5, 4, 3}, true), b = g.input("b", b_shape, true);
    const ValueId y = g.add<Mul>({a, b}, "mul");
    g.finalize();
    const Tensor ta = testing::random_input(g, a, 1), tb = testing::random_input(g, b, 2);
    g.forward(true);
    const Tensor out = g.read(y);
    // Reference in NCHW order: b indexed at (n, c) when broadcast.
    double worst = 0;
    for (std::int64_t n = 0; n < 2; ++n)
      for (std::int64_t c = 0; c < 5; ++c)
        for (std::int64_t hw = 0; hw < 12; ++hw) {
          const std::int64_t i = (n * 5 + c) * 12 + hw;
          const float bv = b_shape[2] == 1 ? tb[n * 5 + c] : tb[i];
          worst = std::max(worst, double(std::abs(out[i] - ta[i] * bv)));
        }
    CHECK(worst < 1e-6);
    const auto res = testing::check_gradients(g, {a, b}, y);
    CHECK_MESSAGE(res.ok, res.report);
    CHECK(res.checked > 0);
  }
}

TEST_CASE("mul refuses shapes it cannot broadcast, naming the layer") {
  Context ctx(1);
  Graph g(ctx);
  const ValueId a = g.input("a", {2, 5, 4, 3}), b = g.input("b", {2, 5, 4, 1});
  g.add<Mul>({a, b}, "gate");
  CHECK_THROWS_WITH(g.finalize(), doctest::Contains("layer 'gate' (mul): multiplies shapes"));
}

TEST_CASE("channel scale multiplies each channel by its param, named as given, with exact gradients") {
  for (const Shape& shape : {Shape{2, 4, 3, 3}, Shape{1, 4, 1, 1}}) {
    CAPTURE(to_string(shape));
    Context ctx(2);
    Graph g(ctx);
    const ValueId x = g.input("x", shape, true);
    const ValueId y = g.add<ChannelScale>({x}, "block", "block.layer_scale", 4);
    g.finalize();
    auto& p = g.params()[0];
    CHECK(p.name == "block.layer_scale");
    CHECK(p.shape == Shape{4, 1, 1});
    for (int c = 0; c < 4; ++c) p.values()[std::size_t(c)] = 0.5f + 0.25f * float(c);
    const Tensor in = testing::random_input(g, x, 7);
    g.forward(true);
    const Tensor out = g.read(y);
    double worst = 0;
    for (std::int64_t i = 0; i < in.numel(); ++i) {
      const auto c = (i / (shape[2] * shape[3])) % 4;
      worst = std::max(worst, double(std::abs(out[i] - in[i] * (0.5f + 0.25f * float(c)))));
    }
    CHECK(worst < 1e-6);
    const auto res = testing::check_gradients(g, {x}, y);
    CHECK_MESSAGE(res.ok, res.report);
    CHECK(res.checked > 0);
  }
}

}  // namespace layers_mul_test
