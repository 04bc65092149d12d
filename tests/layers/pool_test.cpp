#include <doctest/doctest.h>

#include "elastic/layers/pool.hpp"
#include "elastic/testing/gradcheck.hpp"

using namespace elastic;

namespace {
// Direct NCHW pooling in double, torch semantics.
std::vector<double> reference_pool(const Tensor& x, const PoolOptions& o, bool max, const Shape& y) {
  const auto N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const auto sh = o.stride_h ? o.stride_h : o.kernel_h, sw = o.stride_w ? o.stride_w : o.kernel_w;
  std::vector<double> out;
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t i = 0; i < y[2]; ++i)
        for (std::int64_t j = 0; j < y[3]; ++j) {
          double acc = max ? -1e300 : 0;
          for (std::int64_t a = 0; a < o.kernel_h; ++a)
            for (std::int64_t b = 0; b < o.kernel_w; ++b) {
              const auto h = i * sh - o.padding_h + a, w = j * sw - o.padding_w + b;
              if (h < 0 || h >= H || w < 0 || w >= W) continue;
              const double v = x[((n * C + c) * H + h) * W + w];
              acc = max ? std::max(acc, v) : acc + v;
            }
          out.push_back(max ? acc : acc / double(o.kernel_h * o.kernel_w));
        }
  return out;
}

// Distinct values (a shuffled ramp), so no two elements of a window tie and
// small perturbations never move an argmax.
Tensor distinct_input(Graph& g, ValueId x, std::uint64_t seed) {
  Tensor t(g.shape(x));
  Rng rng(seed);
  std::vector<float> v(static_cast<std::size_t>(t.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = -2.0f + 4.0f * float(i) / float(v.size());
  for (std::size_t i = v.size() - 1; i > 0; --i) std::swap(v[i], v[rng.below(i + 1)]);
  std::copy(v.begin(), v.end(), t.data());
  g.write(x, t);
  return t;
}

struct Case {
  const char* label;
  Shape input;
  PoolOptions o;
  bool max;
  Shape expect;
};
}  // namespace

TEST_CASE("max and average pooling match torch's definitions and finite differences") {
  const Case cases[] = {
      {"max 3x3 s2 p1", {3, 5, 9, 7}, {.kernel_h = 3, .kernel_w = 3, .stride_h = 2, .stride_w = 2, .padding_h = 1, .padding_w = 1}, true, {3, 5, 5, 4}},
      {"max 2x2 odd size", {3, 6, 7, 5}, {.kernel_h = 2, .kernel_w = 2}, true, {3, 6, 3, 2}},
      {"avg 3x3 s1 p1 counts padding", {3, 5, 6, 9}, {.kernel_h = 3, .kernel_w = 3, .stride_h = 1, .stride_w = 1, .padding_h = 1, .padding_w = 1}, false, {3, 5, 6, 9}},
      {"avg 2x3 s2", {3, 7, 8, 9}, {.kernel_h = 2, .kernel_w = 3, .stride_h = 2, .stride_w = 2}, false, {3, 7, 4, 4}},
  };
  for (const auto& c : cases) {
    CAPTURE(c.label);
    Context ctx(2);
    Graph g(ctx);
    const auto x = g.input("x", c.input, true);
    const auto y = c.max ? g.add<MaxPool2d>({x}, "pool", c.o) : g.add<AvgPool2d>({x}, "pool", c.o);
    g.finalize();
    REQUIRE(g.shape(y) == c.expect);
    const Tensor in = distinct_input(g, x, 5);
    g.forward(true);
    const Tensor out = g.read(y);
    const auto ref = reference_pool(in, c.o, c.max, c.expect);
    double worst = 0;
    for (std::int64_t i = 0; i < out.numel(); ++i) worst = std::max(worst, std::abs(out[i] - ref[std::size_t(i)]));
    CHECK(worst < 1e-5);
    const auto res = testing::check_gradients(g, {x}, y, {.eps = 1e-4, .max_checks = 120});
    CHECK_MESSAGE(res.ok, res.report);
  }
}

TEST_CASE("global average pooling gives (N, C) channel means") {
  Context ctx(2);
  Graph g(ctx);
  const auto x = g.input("x", {3, 13, 5, 7}, true);
  const auto y = g.add<GlobalAvgPool>({x}, "avgpool");
  g.finalize();
  REQUIRE(g.shape(y) == Shape{3, 13});
  const Tensor in = testing::random_input(g, x, 2);
  g.forward(true);
  const Tensor out = g.read(y);
  for (std::int64_t n = 0; n < 3; ++n)
    for (std::int64_t c = 0; c < 13; ++c) {
      double s = 0;
      for (std::int64_t p = 0; p < 35; ++p) s += in[(n * 13 + c) * 35 + p];
      CHECK(out[n * 13 + c] == doctest::Approx(s / 35).epsilon(1e-5));
    }
  const auto res = testing::check_gradients(g, {x}, y);
  CHECK_MESSAGE(res.ok, res.report);
}

TEST_CASE("pooling refuses kernels larger than the input, naming the layer") {
  Context ctx(1);
  Graph g(ctx);
  const auto x = g.input("x", {1, 2, 3, 3});
  g.add<MaxPool2d>({x}, "features.4", PoolOptions{.kernel_h = 5, .kernel_w = 5});
  CHECK_THROWS_WITH_AS(g.finalize(), doctest::Contains("features.4"), Error);
  CHECK_THROWS_AS(MaxPool2d("p", PoolOptions{.kernel_h = 2, .kernel_w = 2, .padding_h = 2}), Error);
}
