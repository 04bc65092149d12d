#include "elastic/layers/slice.hpp"

#include <doctest/doctest.h>

#include "elastic/layers/add.hpp"
#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_slice_test {

using namespace elastic;

TEST_CASE("two slices of the channels are the input's halves, and their gradients add up in the input's") {
  Context ctx(2);
  Graph g(ctx);
  const ValueId x = g.input("x", {2, 8, 3, 2}, true);
  const ValueId lo = g.add<Slice>({x}, "lo", 1, 0, 4), hi = g.add<Slice>({x}, "hi", 1, 4, 8);
  const ValueId y = g.add<Add>({lo, hi}, "add");
  g.finalize();
  REQUIRE(g.shape(lo) == Shape{2, 4, 3, 2});
  const Tensor in = testing::random_input(g, x, 5);
  g.forward(true);
  const Tensor out = g.read(y);
  double worst = 0;
  for (std::int64_t n = 0; n < 2; ++n)
    for (std::int64_t c = 0; c < 4; ++c)
      for (std::int64_t hw = 0; hw < 6; ++hw)
        worst = std::max(worst, double(std::abs(out[(n * 4 + c) * 6 + hw] - in[(n * 8 + c) * 6 + hw] -
                                                in[(n * 8 + c + 4) * 6 + hw])));
  CHECK(worst < 1e-6);
  const auto res = testing::check_gradients(g, {x}, y);
  CHECK_MESSAGE(res.ok, res.report);
  CHECK(res.checked > 0);
}

TEST_CASE("a slice outside its axis is refused, naming the layer") {
  Context ctx(1);
  Graph g(ctx);
  const ValueId x = g.input("x", {2, 8, 3, 2});
  g.add<Slice>({x}, "cut", 1, 4, 9);
  CHECK_THROWS_WITH(g.finalize(), doctest::Contains("layer 'cut' (slice): [4, 9) is not a non-empty part"));
}

}  // namespace layers_slice_test
