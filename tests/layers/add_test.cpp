#include "elastic/layers/add.hpp"

#include <doctest/doctest.h>

#include "elastic/core/precision.hpp"
#include "elastic/core/random.hpp"
#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_add_test {

using namespace elastic;
using testing::max_abs_diff;

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

namespace {
// An add of a (2, 6, 5, 4) and b (same shape, or (2, 6, 1, 1)) with `act` inside (one node)
// or after it (an Eltwise node), each input's gradient wanted or not.
struct AddNet {
  Context ctx{2};
  Graph g;
  ValueId a, b, y;
  AddNet(const Shape& b_shape, std::optional<Activation> act, bool fused, bool grad_a, bool grad_b,
         Precision precision = Precision::fp32)
      : g(ctx, precision) {
    a = g.input("a", {2, 6, 5, 4}, grad_a);
    b = g.input("b", b_shape, grad_b);
    y = g.add<Add>({a, b}, "add", fused ? act : std::nullopt);
    if (act && !fused) y = g.add<Eltwise>({y}, "act", *act);
    g.finalize();
  }
};

// Inputs whose sum lies in [-3, 9] but at least 0.05 away from relu's and relu6's kinks
// (0 and 6), so that central differences (eps 1e-3) never straddle one; b in [-1, 1].
std::pair<Tensor, Tensor> away_from_kinks(const Shape& b_shape, std::uint64_t seed) {
  Rng rng(seed);
  Tensor a(Shape{2, 6, 5, 4}), b(b_shape);
  for (auto& v : b.span()) v = rng.uniform(-1.0f, 1.0f);
  const std::int64_t per_b = a.numel() / b.numel();
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    float s = 0;
    do s = rng.uniform(-3.0f, 9.0f);
    while (std::abs(s) < 0.05f || std::abs(s - 6) < 0.05f);
    a[i] = s - b[b.numel() == a.numel() ? i : i / per_b];
  }
  return {a, b};
}
}  // namespace

TEST_CASE("add with relu or relu6 inside matches its definition and finite differences") {
  for (Activation act : {Activation::relu, Activation::relu6}) {
    for (const Shape& b_shape : {Shape{2, 6, 5, 4}, Shape{2, 6, 1, 1}}) {
      CAPTURE(static_cast<int>(act));
      CAPTURE(to_string(b_shape));
      AddNet net(b_shape, act, true, true, true);
      CHECK(net.g.node(net.y).data_reads().output);
      const auto [a, b] = away_from_kinks(b_shape, 3);
      net.g.write(net.a, a);
      net.g.write(net.b, b);
      net.g.forward(true);
      const Tensor y = net.g.read(net.y);
      const float hi = act == Activation::relu6 ? 6.0f : 1e30f;
      int low = 0, high = 0;
      double worst = 0;
      for (std::int64_t i = 0; i < y.numel(); ++i) {
        const float s = a[i] + b[b.numel() == a.numel() ? i : i / 20];
        low += s < 0;
        high += s > hi;
        worst = std::max(worst, double(std::abs(y[i] - std::clamp(s, 0.0f, hi))));
      }
      CHECK(low > 0);  // the kinks are in play
      if (act == Activation::relu6) CHECK(high > 0);
      CHECK(worst == 0);
      const auto res = testing::check_gradients(net.g, {net.a, net.b}, net.y, {.eps = 1e-3});
      CHECK_MESSAGE(res.ok, res.report);
      CHECK(res.checked > 20);
    }
  }
}

// Against the two-node form (add, then the activation's node: each checked on its own),
// bit for bit: the output and every wanted gradient, in fp32 and (where the CPU has it)
// bf16, same-shape and broadcast, with either input's gradient unwanted.
TEST_CASE("add with an activation inside equals add followed by the activation's node") {
  std::vector<Precision> precisions{Precision::fp32};
  if (precision_supported(Precision::bf16)) precisions.push_back(Precision::bf16);
  for (Precision precision : precisions)
    for (Activation act : {Activation::relu, Activation::relu6})
      for (const Shape& b_shape : {Shape{2, 6, 5, 4}, Shape{2, 6, 1, 1}})
        for (int wanted = 1; wanted < 4; ++wanted) {
          const bool grad_a = wanted & 1, grad_b = wanted & 2;
          CAPTURE(to_string(precision));
          CAPTURE(static_cast<int>(act));
          CAPTURE(to_string(b_shape));
          CAPTURE(wanted);
          AddNet fused(b_shape, act, true, grad_a, grad_b, precision);
          AddNet two(b_shape, act, false, grad_a, grad_b, precision);
          Rng rng(5);
          Tensor a(fused.g.shape(fused.a)), b(b_shape), dy(fused.g.shape(fused.y));
          for (Tensor* t : {&a, &b, &dy})
            for (auto& v : t->span()) v = rng.uniform(-4.0f, 8.0f);
          for (AddNet* net : {&fused, &two}) {
            net->g.write(net->a, a);
            net->g.write(net->b, b);
            net->g.forward(true);
            net->g.write_grad(net->y, dy);
            net->g.backward();
          }
          const Tensor y = fused.g.read(fused.y);
          CHECK(max_abs_diff(y, two.g.read(two.y)) == 0);
          int passed = 0;
          for (const float v : y.span()) passed += v > 0 && v < (act == Activation::relu6 ? 6.0f : 1e30f);
          CHECK(passed > 0);
          CHECK(passed < y.numel());
          if (grad_a) CHECK(max_abs_diff(fused.g.read_grad(fused.a), two.g.read_grad(two.a)) == 0);
          if (grad_b) CHECK(max_abs_diff(fused.g.read_grad(fused.b), two.g.read_grad(two.b)) == 0);
        }
}

TEST_CASE("add fuses only relu and relu6, naming the layer") {
  CHECK(Add::fuses(Activation::relu));
  CHECK(Add::fuses(Activation::relu6));
  CHECK_FALSE(Add::fuses(Activation::gelu));
  CHECK_THROWS_WITH(Add("join", Activation::gelu),
                    doctest::Contains("layer 'join' (add): only relu and relu6 fuse into add, not gelu"));
  Add plain("plain");
  CHECK_FALSE(plain.activation().has_value());
  CHECK_FALSE(plain.data_reads().output);
}

TEST_CASE("add refuses shapes it cannot broadcast, naming the layer") {
  Context ctx(1);
  Graph g(ctx);
  const ValueId a = g.input("a", {2, 5, 4, 3}), b = g.input("b", {2, 5, 4, 1});
  g.add<Add>({a, b}, "join");
  CHECK_THROWS_WITH(g.finalize(), doctest::Contains("layer 'join' (add): input shapes differ"));
}

}  // namespace layers_add_test
