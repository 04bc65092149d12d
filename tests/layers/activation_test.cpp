#include <doctest/doctest.h>

#include "elastic/layers/activation.hpp"
#include "elastic/testing/gradcheck.hpp"

using namespace elastic;

namespace {
double reference(Activation a, double x) {
  switch (a) {
    case Activation::relu: return x > 0 ? x : 0;
    case Activation::relu6: return std::clamp(x, 0.0, 6.0);
    default: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
  }
}

// Inputs in [-8, 8] kept 0.05 away from the kinks at 0 and 6, so finite differences see smooth functions.
Tensor away_from_kinks(Graph& g, ValueId x, std::uint64_t seed) {
  Rng rng(seed);
  Tensor t(g.shape(x));
  for (auto& v : t.span()) {
    do v = rng.uniform(-8.0f, 8.0f);
    while (std::abs(v) < 0.05f || std::abs(v - 6.0f) < 0.05f);
  }
  g.write(x, t);
  return t;
}
}  // namespace

TEST_CASE("activations match their definitions and finite differences") {
  for (auto a : {Activation::relu, Activation::relu6, Activation::gelu})
    for (const Shape& shape : {Shape{3, 5, 7, 6}, Shape{3, 13}, Shape{3, 4, 11}}) {
      CAPTURE(static_cast<int>(a));
      CAPTURE(to_string(shape));
      Context ctx(2);
      Graph g(ctx);
      const auto x = g.input("x", shape, true);
      const auto y = g.add<Eltwise>({x}, "act", a);
      g.finalize();
      const Tensor in = away_from_kinks(g, x, 3);
      g.forward(true);
      const Tensor out = g.read(y);
      double worst = 0;
      for (std::int64_t i = 0; i < in.numel(); ++i) worst = std::max(worst, std::abs(out[i] - reference(a, in[i])));
      CHECK(worst < 1e-5);
      const auto res = testing::check_gradients(g, {x}, y, {.eps = 1e-2, .max_checks = 200});
      CHECK_MESSAGE(res.ok, res.report);
    }
}

TEST_CASE("relu and relu6 keep only their output for backward; gelu keeps its input") {
  CHECK(Eltwise("a", Activation::relu).data_reads().output);
  CHECK_FALSE(Eltwise("a", Activation::relu).data_reads().inputs);
  CHECK(Eltwise("a", Activation::relu6).data_reads().output);
  CHECK(Eltwise("a", Activation::gelu).data_reads().inputs);
}
