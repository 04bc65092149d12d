#include "elastic/layers/shuffle.hpp"

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_shuffle_test {

using namespace elastic;

TEST_CASE("channel shuffle moves input channel i*(C/g) + k to output channel k*g + i, with exact gradients") {
  for (std::int64_t groups : {2, 3}) {
    CAPTURE(groups);
    Context ctx(2);
    Graph g(ctx);
    const std::int64_t C = 6;
    const ValueId x = g.input("x", {2, C, 3, 2}, true);
    const ValueId y = g.add<ChannelShuffle>({x}, "shuffle", groups);
    g.finalize();
    const Tensor in = testing::random_input(g, x, 3);
    g.forward(true);
    const Tensor out = g.read(y);
    bool same = true;
    for (std::int64_t n = 0; n < 2; ++n)
      for (std::int64_t i = 0; i < groups; ++i)
        for (std::int64_t k = 0; k < C / groups; ++k)
          for (std::int64_t hw = 0; hw < 6; ++hw)
            same &= out[(n * C + k * groups + i) * 6 + hw] == in[(n * C + i * (C / groups) + k) * 6 + hw];
    CHECK(same);
    const auto res = testing::check_gradients(g, {x}, y);
    CHECK_MESSAGE(res.ok, res.report);
    CHECK(res.checked > 0);
  }
}

}  // namespace layers_shuffle_test
