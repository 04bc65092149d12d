#include "elastic/layers/activation.hpp"

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_activation_test {

using namespace elastic;

namespace {
double reference(Activation a, double x) {
  switch (a) {
    case Activation::relu:
      return x > 0 ? x : 0;
    case Activation::relu6:
      return std::clamp(x, 0.0, 6.0);
    case Activation::gelu:
      return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case Activation::sigmoid:
      return 1 / (1 + std::exp(-x));
    case Activation::silu:
      return x / (1 + std::exp(-x));
    case Activation::hardswish:
      return x * std::clamp(x + 3, 0.0, 6.0) / 6;
    case Activation::hardsigmoid:
      return std::clamp(x + 3, 0.0, 6.0) / 6;
  }
  FAIL("no reference for activation kind ", static_cast<int>(a));
  return 0;
}

double reference_grad(Activation a, double x) {
  switch (a) {
    case Activation::relu:
      return x > 0 ? 1 : 0;
    case Activation::relu6:
      return x > 0 && x < 6 ? 1 : 0;
    case Activation::gelu:
      return 0.5 * (1 + std::erf(x / std::sqrt(2.0))) + x * std::exp(-0.5 * x * x) / std::sqrt(2 * std::numbers::pi);
    case Activation::sigmoid: {
      const double s = 1 / (1 + std::exp(-x));
      return s * (1 - s);
    }
    case Activation::silu: {
      const double s = 1 / (1 + std::exp(-x));
      return s * (1 + x * (1 - s));
    }
    case Activation::hardswish:
      return x < -3 ? 0 : x > 3 ? 1 : (2 * x + 3) / 6;
    case Activation::hardsigmoid:
      return x > -3 && x < 3 ? 1.0 / 6 : 0;
  }
  FAIL("no reference for activation kind ", static_cast<int>(a));
  return 0;
}

// Inputs in [-8, 8] kept 2e-3 away from the kinks at -3, 0, 3 and 6: with eps = 1e-3
// the central differences never straddle a kink.
Tensor away_from_kinks(Graph& g, ValueId x, std::uint64_t seed) {
  Rng rng(seed);
  Tensor t(g.shape(x));
  for (auto& v : t.span()) {
    do v = rng.uniform(-8.0f, 8.0f);
    while (std::abs(v) < 2e-3f || std::abs(v - 6.0f) < 2e-3f || std::abs(std::abs(v) - 3.0f) < 2e-3f);
  }
  g.write(x, t);
  return t;
}

const Activation kAll[] = {Activation::relu, Activation::relu6,     Activation::gelu,       Activation::sigmoid,
                           Activation::silu, Activation::hardswish, Activation::hardsigmoid};
}  // namespace

TEST_CASE("activations match their definitions and finite differences on any rank") {
  for (auto a : kAll)
    for (const Shape& shape : {Shape{3, 5, 7, 6}, Shape{3, 13}, Shape{3, 4, 11}}) {
      CAPTURE(static_cast<int>(a));
      CAPTURE(to_string(shape));
      Context ctx(2);
      Graph g(ctx);
      const auto x = g.input("x", shape, true);
      const auto y = g.add<Eltwise>({x}, "act", a);
      g.finalize();
      REQUIRE(g.shape(y) == shape);
      const Tensor in = away_from_kinks(g, x, 3);
      g.forward(true);
      const Tensor out = g.read(y);
      double worst = 0;
      for (std::int64_t i = 0; i < in.numel(); ++i) worst = std::max(worst, std::abs(out[i] - reference(a, in[i])));
      CHECK(worst < 1e-5);
      const auto res = testing::check_gradients(g, {x}, y, {.eps = 1e-3, .max_checks = 200});
      CHECK_MESSAGE(res.ok, res.report);
      CHECK(res.checked == std::min<std::int64_t>(200, in.numel()));
    }
}

TEST_CASE(
    "every activation matches its definition at hand-picked points (relu6 clamps to [0, 6], gelu is the erf form)") {
  const std::vector<float> points{-7.0f, -1.5f, -0.25f, 0.0f, 0.5f, 1.0f, 3.0f, 5.99f, 6.0f, 6.01f, 9.0f, 100.0f};
  for (auto a : kAll) {
    CAPTURE(static_cast<int>(a));
    Context ctx(1);
    Graph g(ctx);
    const auto n = static_cast<std::int64_t>(points.size());
    const auto x = g.input("x", {1, n});
    const auto y = g.add<Eltwise>({x}, "act", a);
    g.finalize();
    Tensor in(Shape{1, n});
    std::copy(points.begin(), points.end(), in.span().begin());
    g.write(x, in);
    g.forward(false);
    const Tensor out = g.read(y);
    for (std::int64_t i = 0; i < n; ++i) CHECK(out[i] == doctest::Approx(reference(a, points[i])).epsilon(1e-6));
    // The layer itself at x = 1 (points[5]), in numbers written out: relu 1, relu6 1,
    // gelu(1) = 0.5 * (1 + erf(1/sqrt 2)) = 0.8413447 (the tanh approximation gives 0.8411920),
    // sigmoid(1) = silu(1) = 1 / (1 + e^-1) = 0.7310586, hardswish(1) = hardsigmoid(1) = 4/6.
    const double at_one = a == Activation::gelu                                        ? 0.8413447460685429
                          : a == Activation::sigmoid || a == Activation::silu          ? 0.7310585786300049
                          : a == Activation::hardswish || a == Activation::hardsigmoid ? 4.0 / 6
                                                                                       : 1.0;
    CHECK(out[5] == doctest::Approx(at_one).epsilon(1e-6));
  }
}

TEST_CASE("activations that declare they do not read their input (relu, relu6, sigmoid, hardsigmoid, gelu) do not") {
  // Overwriting the input between forward and backward must not change the
  // gradient of a node that declared it only reads its output.
  for (auto a : kAll) {
    CAPTURE(static_cast<int>(a));
    Context ctx(2);
    Graph g(ctx);
    const auto x = g.input("x", {3, 5, 7, 6}, true);
    const auto y = g.add<Eltwise>({x}, "act", a);
    g.finalize();
    const Tensor in = away_from_kinks(g, x, 9);
    Rng rng(4);
    Tensor dy(g.shape(y));
    for (auto& v : dy.span()) v = rng.uniform(-1.0f, 1.0f);
    g.select_all();
    g.forward(true);
    const bool reads_input = g.node(y).data_reads().inputs;
    if (!reads_input) g.write(x, Tensor(g.shape(x)));  // zeros: a backward reading x would see only kinks
    g.write_grad(y, dy);
    g.backward();
    const Tensor dx = g.read_grad(x);
    double worst = 0;
    for (std::int64_t i = 0; i < in.numel(); ++i)
      worst = std::max(worst, std::abs(dx[i] - dy[i] * reference_grad(a, in[i])));
    CHECK(worst < 1e-5);
  }
  CHECK(Eltwise("a", Activation::relu).data_reads().output);
  CHECK_FALSE(Eltwise("a", Activation::relu).data_reads().inputs);
  CHECK(Eltwise("a", Activation::relu6).data_reads().output);
  CHECK_FALSE(Eltwise("a", Activation::relu6).data_reads().inputs);
  // GELU on the host keeps its derivative (saved_bytes) instead; on oneDNN it reads x.
  CHECK_FALSE(Eltwise("a", Activation::gelu, true).data_reads().inputs);
  CHECK_FALSE(Eltwise("a", Activation::gelu, true).data_reads().output);
  CHECK(Eltwise("a", Activation::gelu, false).data_reads().inputs);
  CHECK(Eltwise("a", Activation::gelu).data_reads().inputs == !host::runs_avx512());
  CHECK_FALSE(Eltwise("a", Activation::sigmoid).data_reads().inputs);
  CHECK_FALSE(Eltwise("a", Activation::hardsigmoid).data_reads().inputs);
  CHECK(Eltwise("a", Activation::silu).data_reads().inputs);
  CHECK(Eltwise("a", Activation::hardswish).data_reads().inputs);
}

TEST_CASE("GELU keeps its derivative only where its backward runs, and its values do not depend on that") {
  for (const Precision precision : {Precision::fp32, Precision::bf16}) {
    if (!precision_supported(precision)) continue;  // no native bf16 on this CPU
    CAPTURE(to_string(precision));
    const Shape shape{3, 7, 101};
    const auto run = [&](bool grad) {
      Context ctx(2);
      Graph g(ctx, precision);
      const auto x = g.input("x", shape, grad);
      const auto y = g.add<Eltwise>({x}, "act", Activation::gelu, true);
      g.finalize();
      // Its derivative is written exactly where backward_data runs (Node::saved bound).
      CHECK(g.plan().run_data[std::size_t(y)] == grad);
      away_from_kinks(g, x, 11);
      g.forward(true);
      return g.read(y);
    };
    const Tensor with = run(true), without = run(false);
    for (std::int64_t i = 0; i < with.numel(); ++i) REQUIRE(with[i] == without[i]);
  }
  // The memory plan sees the derivative's size (one fp32 value per element here) and places
  // it: the arena is that much larger than with GELU on oneDNN (which reads the pinned input).
  const auto arena = [](bool host_gelu) {
    Context ctx(1);
    Graph g(ctx);
    const auto x = g.input("x", {4, 256}, true);
    const auto y = g.add<Eltwise>({x}, "act", Activation::gelu, host_gelu);
    const auto z = g.add<Eltwise>({y}, "relu", Activation::relu);
    g.finalize();
    CHECK(g.topology().nodes[std::size_t(y)].saved_bytes == (host_gelu ? 4 * 256 * 4 : 0));
    CHECK(g.topology().nodes[std::size_t(z)].saved_bytes == 0);
    return g.plan_arena_bytes();
  };
  CHECK(arena(true) == arena(false) + 4 * 256 * 4);
}

TEST_CASE("GELU on oneDNN's kernels (CPUs without AVX-512) matches its definition, finite differences and the host's") {
  const Shape shape{3, 5, 7, 6};
  const auto run = [&](bool host_gelu, Tensor* dx) {
    Context ctx(2);
    Graph g(ctx);
    const auto x = g.input("x", shape, true);
    const auto y = g.add<Eltwise>({x}, "act", Activation::gelu, host_gelu);
    g.finalize();
    CHECK(g.topology().nodes[std::size_t(y)].saved_bytes == (host_gelu ? g.topology().nodes[std::size_t(y)].bytes : 0));
    const Tensor in = away_from_kinks(g, x, 21);
    g.forward(true);
    const Tensor out = g.read(y);
    if (!host_gelu) {
      double worst = 0;
      for (std::int64_t i = 0; i < in.numel(); ++i)
        worst = std::max(worst, std::abs(out[i] - reference(Activation::gelu, in[i])));
      CHECK(worst < 1e-5);
      const auto res = testing::check_gradients(g, {x}, y, {.eps = 1e-3, .max_checks = 200});
      CHECK_MESSAGE(res.ok, res.report);
    }
    g.write_grad(y, Tensor(shape, 1.0f));
    g.backward();
    *dx = g.read_grad(x);
    return out;
  };
  Tensor dx_dnnl, dx_host;
  const Tensor on_dnnl = run(false, &dx_dnnl), on_host = run(true, &dx_host);
  for (std::int64_t i = 0; i < on_host.numel(); ++i) {
    CHECK(on_host[i] == doctest::Approx(on_dnnl[i]).epsilon(1e-6));
    CHECK(dx_host[i] == doctest::Approx(dx_dnnl[i]).epsilon(1e-6));
  }
}

TEST_CASE("an activation kind outside the enum is refused, not taken for another kind") {
  CHECK_THROWS_WITH(Eltwise("a", static_cast<Activation>(7)), doctest::Contains("activation kind 7 is not one of"));
}

TEST_CASE("activation nodes report their kind as type") {
  CHECK(Eltwise("a", Activation::relu).type() == "relu");
  CHECK(Eltwise("a", Activation::relu6).type() == "relu6");
  CHECK(Eltwise("a", Activation::gelu).type() == "gelu");
  CHECK(Eltwise("a", Activation::hardsigmoid).type() == "hardsigmoid");
}

}  // namespace layers_activation_test
