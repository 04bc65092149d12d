#include "elastic/layers/add.hpp"

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_add_test {

using namespace elastic;

TEST_CASE("add sums two images, or broadcasts an (N, C, 1, 1) term over one, with exact gradients") {
  for (const Shape& b_shape : {Shape{2, 5, 4, 3}, Shape{2, 5, 1, 1}}) {
    CAPTURE(to_string(b_shape));
    Context ctx(2);
    Graph g(ctx);
    const ValueId a = g.input("a", {2, 5, 4, 3}, true), b = g.input("b", b_shape, true);
    const ValueId y = g.add<Add>({a, b}, "add");
    g.finalize();
    const Tensor ta = testing::random_input(g, a, 1), tb = testing::random_input(g, b, 2);
    g.forward(true);
    const Tensor out = g.read(y);
    double worst = 0;
    for (std::int64_t i = 0; i < out.numel(); ++i) {
      const float bv = b_shape[2] == 1 ? tb[i / 12] : tb[i];
      worst = std::max(worst, double(std::abs(out[i] - ta[i] - bv)));
    }
    CHECK(worst < 1e-6);
    const auto res = testing::check_gradients(g, {a, b}, y);
    CHECK_MESSAGE(res.ok, res.report);
    CHECK(res.checked > 0);
  }
}

TEST_CASE("add refuses shapes it cannot broadcast, naming the layer") {
  Context ctx(1);
  Graph g(ctx);
  const ValueId a = g.input("a", {2, 5, 4, 3}), b = g.input("b", {2, 5, 4, 1});
  g.add<Add>({a, b}, "join");
  CHECK_THROWS_WITH(g.finalize(), doctest::Contains("layer 'join' (add): input shapes differ"));
}

}  // namespace layers_add_test
