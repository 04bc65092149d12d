#include "elastic/layers/relayout.hpp"

#include <algorithm>
#include <functional>
#include <string>

#include <doctest/doctest.h>

#include "elastic/layers/activation.hpp"
#include "elastic/layers/conv.hpp"
#include "elastic/layers/pool.hpp"
#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_relayout_test {

using namespace elastic;

namespace {
// x (channels-last) -> [relayout to blocked] -> body -> output; with blocked
// false the same body runs on channels-last values. Returns the output and the
// input's gradient for the output gradient `dy` (seeded).
struct Run {
  Tensor y, dx;
};
using Body = std::function<ValueId(Graph&, ValueId, bool blocked)>;

Run run(const Shape& shape, bool blocked, const Body& body, std::uint64_t seed, bool keeps_layout = true) {
  Context ctx(2);
  Graph g(ctx);
  ValueId x = g.input("x", shape, true);
  ValueId v = blocked ? g.add<Relayout>({x}, "to_blocked", true) : x;
  const ValueId y = body(g, v, blocked);
  g.finalize(3);
  CHECK(is_blocked_image(g.desc(v)) == blocked);
  if (keeps_layout && g.shape(y).size() == 4) CHECK(is_blocked_image(g.desc(y)) == blocked);
  testing::random_input(g, x, seed);
  Rng rng(seed + 1);
  Tensor dy(g.shape(y));
  for (auto& e : dy.span()) e = rng.uniform(-1.0f, 1.0f);
  g.write_grad(y, dy);
  g.forward(true);
  g.backward();
  return {g.read(y), g.read_grad(x)};
}

bool same(const Tensor& a, const Tensor& b, float tol) {
  if (a.shape() != b.shape()) return false;
  for (std::int64_t i = 0; i < a.numel(); ++i)
    if (std::abs(a[i] - b[i]) > tol * (1 + std::abs(b[i]))) return false;
  return true;
}
}  // namespace

TEST_CASE("relayout keeps values and passes gradients through, both ways") {
  const Shape shape{3, 32, 5, 7};
  const Body back = [](Graph& g, ValueId v, bool) { return g.add<Relayout>({v}, "to_channels_last", false); };
  const Run blocked = run(shape, true, back, 1, false), plain = run(shape, false, back, 1, false);
  CHECK(same(blocked.y, plain.y, 0.0f));
  CHECK(same(blocked.dx, plain.dx, 0.0f));
  // And the values are the input's: relayout twice is the identity.
  Context ctx(2);
  Graph g(ctx);
  const ValueId x = g.input("x", shape, true);
  const ValueId y = g.add<Relayout>({g.add<Relayout>({x}, "a", true)}, "b", false);
  g.finalize(1);
  const Tensor in = testing::random_input(g, x, 2);
  const auto res = testing::check_gradients(g, {x}, y);
  CHECK_MESSAGE(res.ok, res.report);
  g.forward(true);
  const Tensor out = g.read(y);
  CHECK(std::equal(in.span().begin(), in.span().end(), out.span().begin()));
}

TEST_CASE("on blocked values, convolution, relu and pools compute what they compute on channels-last ones") {
  const Shape shape{3, 16, 9, 10};
  const std::vector<std::pair<std::string, Body>> bodies{
      {"conv with blocked output, relu",
       [](Graph& g, ValueId v, bool blocked) {
         v = g.add<Conv2d>({v}, "conv",
                           Conv2dOptions{.in_channels = 16,
                                         .out_channels = 32,
                                         .kernel_h = 3,
                                         .kernel_w = 3,
                                         .padding = 1,
                                         .blocked_output = blocked});
         return g.add<Eltwise>({v}, "relu", Activation::relu);
       }},
      {"max pool",
       [](Graph& g, ValueId v, bool) {
         return g.add<MaxPool2d>({v}, "pool", PoolOptions{.kernel_h = 3, .kernel_w = 2, .stride_h = 2, .stride_w = 2});
       }},
      {"average pool",
       [](Graph& g, ValueId v, bool) {
         return g.add<AvgPool2d>({v}, "pool", PoolOptions{.kernel_h = 2, .kernel_w = 3, .padding_w = 1});
       }},
      {"global average pool", [](Graph& g, ValueId v, bool) { return g.add<GlobalAvgPool>({v}, "gap"); }},
  };
  for (const auto& [what, body] : bodies) {
    CAPTURE(what);
    const Run blocked = run(shape, true, body, 5), plain = run(shape, false, body, 5);
    CHECK(same(blocked.y, plain.y, 1e-5f));
    CHECK(same(blocked.dx, plain.dx, 1e-5f));
  }
}

TEST_CASE(
    "a convolution's blocked output matches finite differences; channel counts off the block stay channels-last") {
  Context ctx(2);
  Graph g(ctx);
  const ValueId x = g.input("x", {3, 16, 7, 6}, true);
  const ValueId b = g.add<Relayout>({x}, "to_blocked", true);
  const ValueId c1 = g.add<Conv2d>(
      {b}, "c1",
      Conv2dOptions{
          .in_channels = 16, .out_channels = 16, .kernel_h = 3, .kernel_w = 3, .padding = 1, .blocked_output = true});
  const ValueId c2 = g.add<Conv2d>(
      {c1}, "c2",
      Conv2dOptions{
          .in_channels = 16, .out_channels = 13, .kernel_h = 3, .kernel_w = 3, .padding = 1, .blocked_output = true});
  g.finalize(4);
  CHECK(is_blocked_image(g.desc(c1)));
  CHECK_FALSE(is_blocked_image(g.desc(c2)));  // 13 channels: no blocked layout without padding
  CHECK(g.desc(c2) == activation_desc(g.shape(c2)));
  testing::random_input(g, x, 6);
  const auto res = testing::check_gradients(g, {x}, c2);
  CHECK_MESSAGE(res.ok, res.report);
  CHECK(res.checked > 150);
}

}  // namespace layers_relayout_test
