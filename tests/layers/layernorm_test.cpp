#include "elastic/layers/layernorm.hpp"

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_layernorm_test {

using namespace elastic;

TEST_CASE("layer norm normalizes each row over the last dim; gradients by finite differences") {
  struct Case {
    Shape shape;
    float eps;
  };
  for (const auto& c : {Case{{3, 13}, 1e-5f}, Case{{3, 5, 11}, 1e-6f}}) {
    CAPTURE(to_string(c.shape));
    const std::int64_t E = c.shape.back();
    Context ctx(2);
    Graph g(ctx);
    const auto x = g.input("x", c.shape, true);
    const auto y = g.add<LayerNorm>({x}, "ln_1", LayerNormOptions{.normalized_shape = E, .eps = c.eps});
    g.finalize();
    Rng rng(3);
    for (auto& v : g.params()[0].values()) v = rng.uniform(0.5f, 1.5f);
    for (auto& v : g.params()[1].values()) v = rng.uniform(-0.5f, 0.5f);
    const Tensor in = testing::random_input(g, x, 4, -2.0f, 3.0f);
    g.forward(true);
    const Tensor out = g.read(y);
    double worst = 0;
    for (std::int64_t r = 0; r < in.numel() / E; ++r) {
      double mean = 0, var = 0;
      for (std::int64_t e = 0; e < E; ++e) mean += in[r * E + e];
      mean /= double(E);
      for (std::int64_t e = 0; e < E; ++e) var += (in[r * E + e] - mean) * (in[r * E + e] - mean);
      var /= double(E);
      for (std::int64_t e = 0; e < E; ++e) {
        const double ref =
            g.params()[0].value[e] * (in[r * E + e] - mean) / std::sqrt(var + c.eps) + g.params()[1].value[e];
        worst = std::max(worst, std::abs(ref - out[r * E + e]));
      }
    }
    CHECK(worst < 1e-5);
    const auto res = testing::check_gradients(g, {x}, y);
    CHECK_MESSAGE(res.ok, res.report);
    CHECK(res.checked > 40);
  }
}

TEST_CASE("layer norm names its params like torch and rejects a wrong feature size") {
  Context ctx(1);
  Graph g(ctx);
  const auto x = g.input("x", {2, 3, 8});
  g.add<LayerNorm>({x}, "encoder.ln", LayerNormOptions{.normalized_shape = 8});
  g.finalize();
  CHECK(g.params()[0].name == "encoder.ln.weight");
  CHECK(g.params()[1].name == "encoder.ln.bias");
  Graph bad(ctx);
  const auto z = bad.input("z", {2, 7});
  bad.add<LayerNorm>({z}, "encoder.ln", LayerNormOptions{.normalized_shape = 8});
  CHECK_THROWS_WITH_AS(bad.finalize(), doctest::Contains("encoder.ln"), Error);
}

}  // namespace layers_layernorm_test
