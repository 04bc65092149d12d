#include "elastic/layers/attention.hpp"

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_attention_test {

using namespace elastic;

namespace {
// Multi-head attention core in double from the packed (N, T, 3E) input.
std::vector<double> reference(const Tensor& x, std::int64_t heads) {
  const auto N = x.dim(0), T = x.dim(1), E = x.dim(2) / 3, D = E / heads;
  std::vector<double> out(static_cast<std::size_t>(N * T * E));
  const auto at = [&](std::int64_t n, std::int64_t t, std::int64_t col) {
    return double(x[(n * T + t) * 3 * E + col]);
  };
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t i = 0; i < T; ++i) {
        std::vector<double> s(static_cast<std::size_t>(T));
        double m = -1e300;
        for (std::int64_t j = 0; j < T; ++j) {
          double dot = 0;
          for (std::int64_t k = 0; k < D; ++k) dot += at(n, i, h * D + k) * at(n, j, E + h * D + k);
          s[std::size_t(j)] = dot / std::sqrt(double(D));
          m = std::max(m, s[std::size_t(j)]);
        }
        double z = 0;
        for (auto& v : s) z += (v = std::exp(v - m));
        for (std::int64_t k = 0; k < D; ++k) {
          double acc = 0;
          for (std::int64_t j = 0; j < T; ++j) acc += s[std::size_t(j)] / z * at(n, j, 2 * E + h * D + k);
          out[std::size_t((n * T + i) * E + h * D + k)] = acc;
        }
      }
  return out;
}
}  // namespace

TEST_CASE("attention core matches softmax(QK^T/sqrt(d))V per head, with finite-difference gradients") {
  struct Case {
    std::int64_t n, t, e, heads;
  };
  for (const auto& c : {Case{3, 5, 12, 3}, Case{2, 7, 10, 2}, Case{3, 4, 6, 1}}) {
    CAPTURE(c.heads);
    CAPTURE(c.t);
    Context ctx(2);
    Graph g(ctx);
    const auto x = g.input("qkv", {c.n, c.t, 3 * c.e}, true);
    const auto y = g.add<ScaledDotProductAttention>({x}, "self_attention.core", c.heads);
    g.finalize();
    REQUIRE(g.shape(y) == Shape{c.n, c.t, c.e});
    const Tensor in = testing::random_input(g, x, 5, -1.5f, 1.5f);
    g.forward(true);
    const Tensor out = g.read(y);
    const auto ref = reference(in, c.heads);
    double worst = 0;
    for (std::int64_t i = 0; i < out.numel(); ++i) worst = std::max(worst, std::abs(out[i] - ref[std::size_t(i)]));
    CHECK(worst < 1e-5);
    const auto res = testing::check_gradients(g, {x}, y, {.max_checks = 150});
    CHECK_MESSAGE(res.ok, res.report);
  }
}

TEST_CASE("attention rejects embed dims not divisible by the heads, naming the layer") {
  Context ctx(1);
  Graph g(ctx);
  const auto x = g.input("qkv", {2, 3, 30});
  g.add<ScaledDotProductAttention>({x}, "encoder_layer_0.attn", 4);
  CHECK_THROWS_WITH_AS(g.finalize(), doctest::Contains("encoder_layer_0.attn"), Error);
  Graph g2(ctx);
  const auto z = g2.input("qkv", {2, 3, 10});
  g2.add<ScaledDotProductAttention>({z}, "attn", 1);
  CHECK_THROWS_WITH_AS(g2.finalize(), doctest::Contains("not 3E"), Error);
}

}  // namespace layers_attention_test
