#include "elastic/layers/concat.hpp"

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_concat_test {

using namespace elastic;

TEST_CASE("concat joins images along channels, and each input's gradient is its part of the output's") {
  Context ctx(2);
  Graph g(ctx);
  const std::int64_t channels[] = {3, 5, 2};
  std::vector<ValueId> xs;
  for (int i = 0; i < 3; ++i) xs.push_back(g.input(fmt::format("x{}", i), {2, channels[i], 4, 3}, true));
  const ValueId y = g.add<Concat>(xs, "cat");
  g.finalize();
  REQUIRE(g.shape(y) == Shape{2, 10, 4, 3});
  std::vector<Tensor> in;
  for (int i = 0; i < 3; ++i) in.push_back(testing::random_input(g, xs[std::size_t(i)], std::uint64_t(i + 1)));
  g.forward(true);
  const Tensor out = g.read(y);
  bool same = true;
  for (std::int64_t n = 0; n < 2; ++n) {
    std::int64_t c0 = 0;
    for (int i = 0; i < 3; ++i) {
      for (std::int64_t c = 0; c < channels[i]; ++c)
        for (std::int64_t hw = 0; hw < 12; ++hw)
          same &= out[(n * 10 + c0 + c) * 12 + hw] == in[std::size_t(i)][(n * channels[i] + c) * 12 + hw];
      c0 += channels[i];
    }
  }
  CHECK(same);
  const auto res = testing::check_gradients(g, xs, y);
  CHECK_MESSAGE(res.ok, res.report);
  CHECK(res.checked > 0);
}

TEST_CASE("concat refuses inputs that differ outside the axis, naming the layer") {
  Context ctx(1);
  Graph g(ctx);
  const ValueId a = g.input("a", {2, 3, 4, 4}), b = g.input("b", {2, 3, 5, 4});
  g.add<Concat>({a, b}, "cat");
  CHECK_THROWS_WITH(g.finalize(), doctest::Contains("layer 'cat' (concat): input shapes"));
}

}  // namespace layers_concat_test
