#include "elastic/layers/flatten.hpp"

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_flatten_test {

using namespace elastic;

TEST_CASE("flatten gives torch's (c, h, w) order from channels-last images, including 1x1 spatial") {
  for (const Shape& shape : {Shape{3, 5, 7, 6}, Shape{3, 7, 1, 1}, Shape{3, 1, 4, 5}}) {
    CAPTURE(to_string(shape));
    const auto N = shape[0], C = shape[1], H = shape[2], W = shape[3];
    Context ctx(2);
    Graph g(ctx);
    const auto x = g.input("x", shape, true);
    const auto y = g.add<Flatten>({x}, "flatten");
    g.finalize();
    REQUIRE(g.shape(y) == Shape{N, C * H * W});
    const Tensor in = testing::random_input(g, x, 1);  // logical NCHW
    g.forward(true);
    const Tensor out = g.read(y);
    std::int64_t wrong = 0;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t h = 0; h < H; ++h)
          for (std::int64_t w = 0; w < W; ++w)
            wrong += out[n * C * H * W + (c * H + h) * W + w] != in[((n * C + c) * H + h) * W + w];
    CHECK(wrong == 0);
    const auto res = testing::check_gradients(g, {x}, y, {.max_checks = 200});
    CHECK_MESSAGE(res.ok, res.report);
  }
}

TEST_CASE("flatten of a 2-D or 3-D input merges the trailing dims in row-major order") {
  for (const Shape& shape : {Shape{3, 4, 5}, Shape{3, 13}}) {
    CAPTURE(to_string(shape));
    Context ctx(2);
    Graph g(ctx);
    const auto x = g.input("x", shape, true);
    const auto y = g.add<Flatten>({x}, "flatten");
    g.finalize();
    REQUIRE(g.shape(y) == Shape{3, numel(shape) / 3});
    const Tensor in = testing::random_input(g, x, 2);
    g.forward(true);
    const Tensor out = g.read(y);
    for (std::int64_t i = 0; i < in.numel(); ++i) CHECK(out[i] == in[i]);
    const auto res = testing::check_gradients(g, {x}, y);
    CHECK_MESSAGE(res.ok, res.report);
  }
}

TEST_CASE("flatten rejects a 1-D input, naming the layer") {
  Context ctx(1);
  Graph g(ctx);
  const auto x = g.input("x", {7});
  g.add<Flatten>({x}, "head.flatten");
  CHECK_THROWS_WITH_AS(g.finalize(), doctest::Contains("head.flatten"), Error);
}

}  // namespace layers_flatten_test
