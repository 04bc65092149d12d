#include "elastic/layers/dropout.hpp"

#include <cmath>
#include <limits>

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_dropout_test {

using namespace elastic;

namespace {
// One forward of a fresh graph holding a single dropout over `shape`.
Tensor run_dropout(const Shape& shape, float p, std::uint64_t seed, std::uint64_t step, bool training, int threads,
                   Tensor* input = nullptr) {
  Context ctx(threads);
  Graph g(ctx);
  const auto x = g.input("x", shape);
  const auto y = g.add<Dropout>({x}, "drop", p, seed);
  g.finalize();
  const Tensor in = testing::random_input(g, x, 1, 0.5f, 1.5f);  // never 0, so a 0 output means dropped
  if (input) *input = in;
  g.set_step(step);
  g.forward(training);
  return g.read(y);
}

std::int64_t count_zeros(const Tensor& t) {
  std::int64_t n = 0;
  for (float v : t.span()) n += v == 0.0f;
  return n;
}
}  // namespace

TEST_CASE("dropout is the identity in inference") {
  Tensor in;
  const Tensor out = run_dropout({3, 5, 7, 6}, 0.5f, 11, 3, false, 2, &in);
  for (std::int64_t i = 0; i < in.numel(); ++i) CHECK(out[i] == in[i]);
}

TEST_CASE("dropout in training drops a fraction p and scales the kept values by 1/(1-p)") {
  for (float p : {0.1f, 0.3f, 0.5f, 0.9f}) {
    CAPTURE(p);
    Tensor in;
    const Tensor out = run_dropout({4, 25000}, p, 11, 5, true, 2, &in);
    std::int64_t dropped = 0, bad_scale = 0;
    for (std::int64_t i = 0; i < in.numel(); ++i) {
      if (out[i] == 0.0f)
        ++dropped;
      else
        bad_scale += std::abs(out[i] - in[i] / (1.0f - p)) > 1e-5f * std::abs(out[i]);
    }
    CHECK(bad_scale == 0);
    // 100k Bernoulli(p) draws: the standard deviation of the ratio is at most 0.0016.
    CHECK(std::abs(double(dropped) / double(in.numel()) - p) < 0.01);
  }
}

TEST_CASE("dropout mask is a function of (seed, step, element): same step same mask, new step or seed new mask") {
  const Shape shape{3, 5, 7, 6};
  const Tensor a = run_dropout(shape, 0.5f, 11, 5, true, 2);
  const Tensor again = run_dropout(shape, 0.5f, 11, 5, true, 2);
  CHECK(std::equal(a.span().begin(), a.span().end(), again.span().begin()));
  // Independent of the thread count: threads split the range, the hash does not see them.
  const Tensor one_thread = run_dropout(shape, 0.5f, 11, 5, true, 1);
  CHECK(std::equal(a.span().begin(), a.span().end(), one_thread.span().begin()));

  const auto differ = [&](const Tensor& b) {
    std::int64_t n = 0;
    for (std::int64_t i = 0; i < a.numel(); ++i) n += (a[i] == 0.0f) != (b[i] == 0.0f);
    return n;
  };
  // Two independent p = 0.5 masks disagree on about half the elements.
  CHECK(differ(run_dropout(shape, 0.5f, 11, 6, true, 2)) > a.numel() / 3);
  CHECK(differ(run_dropout(shape, 0.5f, 12, 5, true, 2)) > a.numel() / 3);
}

TEST_CASE("dropout keeps the same mask across repeated forwards and in backward of the same step") {
  Context ctx(2);
  Graph g(ctx);
  const auto x = g.input("x", {3, 13}, true);
  const auto y = g.add<Dropout>({x}, "drop", 0.4f, 3);
  g.finalize();
  const Tensor in = testing::random_input(g, x, 2, 0.5f, 1.5f);
  g.set_step(8);
  g.forward(true);
  const Tensor out = g.read(y);
  CHECK(count_zeros(out) > 0);
  const auto& node = static_cast<const Dropout&>(g.node(y));
  for (std::int64_t i = 0; i < in.numel(); ++i) CHECK((out[i] != 0.0f) == node.keeps(8, i));
  // Another forward of the same step draws the same mask; one of another step does not.
  g.forward(true);
  const Tensor again = g.read(y);
  CHECK(std::equal(out.span().begin(), out.span().end(), again.span().begin()));
  g.set_step(9);
  g.forward(true);
  const Tensor other = g.read(y);
  CHECK_FALSE(std::equal(out.span().begin(), out.span().end(), other.span().begin()));
  g.set_step(8);
  g.forward(true);
  g.write_grad(y, Tensor(g.shape(y), 1.0f));
  g.backward();
  const Tensor dx = g.read_grad(x);
  // dL/dx = mask / (1 - p) = y / x for a ones upstream gradient.
  for (std::int64_t i = 0; i < in.numel(); ++i) CHECK(dx[i] == doctest::Approx(out[i] / in[i]).epsilon(1e-5));
}

TEST_CASE("dropout gradients match finite differences in training at a fixed step") {
  for (const Shape& shape : {Shape{3, 5, 7, 6}, Shape{3, 13}}) {
    CAPTURE(to_string(shape));
    Context ctx(2);
    Graph g(ctx);
    const auto x = g.input("x", shape, true);
    const auto y = g.add<Dropout>({x}, "drop", 0.5f, 3);
    g.finalize();
    g.set_step(2);
    testing::random_input(g, x, 7);
    const auto res = testing::check_gradients(g, {x}, y, {.max_checks = 200, .training = true});
    CHECK_MESSAGE(res.ok, res.report);
  }
}

TEST_CASE("dropout with p = 0 is the identity even in training") {
  Tensor in;
  const Tensor out = run_dropout({3, 5, 7, 6}, 0.0f, 11, 5, true, 2, &in);
  for (std::int64_t i = 0; i < in.numel(); ++i) CHECK(out[i] == in[i]);
}

TEST_CASE("dropout probability must be in [0, 1), and the error names the layer") {
  CHECK_THROWS_WITH_AS(Dropout("classifier.0", 1.0f), doctest::Contains("classifier.0"), Error);
  CHECK_THROWS_AS(Dropout("d", -0.1f), Error);
  CHECK_THROWS_AS(Dropout("d", 1.5f), Error);
  CHECK_THROWS_AS(Dropout("d", std::numeric_limits<float>::quiet_NaN()), Error);
  CHECK_NOTHROW(Dropout("d", 0.0f));
  CHECK_NOTHROW(Dropout("d", 0.999f));
  CHECK(Dropout("d", 0.2f).data_reads().inputs == false);
  CHECK(Dropout("d", 0.2f).data_reads().output == false);
}

}  // namespace layers_dropout_test
