#include "elastic/layers/slice.hpp"

#include <doctest/doctest.h>

#include "elastic/layers/add.hpp"
#include "elastic/layers/mul.hpp"
#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_slice_test {

using namespace elastic;

// y = lo + hi * hi: neither the sum nor the slices' sizes hide a slice taken from the wrong
// place (a mirrored or swapped part gives hi + lo * lo).
TEST_CASE("two slices of the channels are the input's halves, and their gradients land in the input's") {
  Context ctx(2);
  Graph g(ctx);
  const ValueId x = g.input("x", {2, 8, 3, 2}, true);
  const ValueId lo = g.add<Slice>({x}, "lo", 1, 0, 4), hi = g.add<Slice>({x}, "hi", 1, 4, 8);
  const ValueId sq = g.add<Mul>({hi, hi}, "square");
  const ValueId y = g.add<Add>({lo, sq}, "add");
  g.finalize();
  REQUIRE(g.shape(lo) == Shape{2, 4, 3, 2});
  const Tensor in = testing::random_input(g, x, 5);
  g.forward(true);
  const Tensor out = g.read(y);
  double worst = 0;
  for (std::int64_t n = 0; n < 2; ++n)
    for (std::int64_t c = 0; c < 4; ++c)
      for (std::int64_t hw = 0; hw < 6; ++hw) {
        const double a = in[(n * 8 + c) * 6 + hw], b = in[(n * 8 + c + 4) * 6 + hw];
        worst = std::max(worst, std::abs(double(out[(n * 4 + c) * 6 + hw]) - (a + b * b)));
      }
  CHECK(worst < 1e-5);
  const auto res = testing::check_gradients(g, {x}, y);
  CHECK_MESSAGE(res.ok, res.report);
  CHECK(res.checked > 0);
}

TEST_CASE("a slice along the height takes rows [1, 4) of every image and channel (seen squared)") {
  Context ctx(1);
  Graph g(ctx);
  const ValueId x = g.input("x", {2, 3, 5, 4}, true);
  const ValueId s = g.add<Slice>({x}, "rows", 2, 1, 4);
  const ValueId y = g.add<Mul>({s, s}, "square");
  g.finalize();
  REQUIRE(g.shape(s) == Shape{2, 3, 3, 4});
  const Tensor in = testing::random_input(g, x, 6);
  g.forward(true);
  const Tensor part = g.read(y);
  for (std::int64_t n = 0; n < 2; ++n)
    for (std::int64_t c = 0; c < 3; ++c)
      for (std::int64_t h = 0; h < 3; ++h)
        for (std::int64_t w = 0; w < 4; ++w) {
          CAPTURE(n);
          CAPTURE(c);
          CAPTURE(h);
          const float v = in[((n * 3 + c) * 5 + h + 1) * 4 + w];
          CHECK(part[((n * 3 + c) * 3 + h) * 4 + w] == v * v);
        }
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
