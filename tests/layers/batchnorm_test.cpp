#include "elastic/layers/batchnorm.hpp"

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_batchnorm_test {

using namespace elastic;

namespace {
struct Bn {
  Context ctx{2};
  Graph g{ctx};
  ValueId x, y;
  Bn(const Shape& shape, bool batch_stats, bool input_grad = true) {
    x = g.input("x", shape, input_grad);
    y = g.add<BatchNorm2d>({x}, "bn1", BatchNorm2dOptions{.num_features = shape[1]});
    g.finalize(4);
    g.node_as<BatchNorm2d>(y).set_batch_stats(batch_stats);
    // Non-trivial affine params and running statistics.
    Rng rng(9);
    for (auto& v : g.params()[0].values()) v = rng.uniform(0.5f, 1.5f);
    for (auto& v : g.params()[1].values()) v = rng.uniform(-0.5f, 0.5f);
    for (auto& v : g.params().buffer(0).values()) v = rng.uniform(-0.3f, 0.3f);
    for (auto& v : g.params().buffer(1).values()) v = rng.uniform(0.5f, 2.0f);
  }
  std::span<float> running_mean() { return g.params().buffer(0).values(); }
  std::span<float> running_var() { return g.params().buffer(1).values(); }
};

// y = gamma (x - mean) / sqrt(var + eps) + beta in double, NCHW.
std::vector<double> reference(const Tensor& x, const std::vector<double>& mean, const std::vector<double>& var,
                              const Param& gamma, const Param& beta) {
  const auto N = x.dim(0), C = x.dim(1), P = x.dim(2) * x.dim(3);
  std::vector<double> y(static_cast<std::size_t>(x.numel()));
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t p = 0; p < P; ++p) {
        const auto i = (n * C + c) * P + p;
        y[std::size_t(i)] =
            gamma.value[c] * (x[i] - mean[std::size_t(c)]) / std::sqrt(var[std::size_t(c)] + 1e-5) + beta.value[c];
      }
  return y;
}

void batch_stats(const Tensor& x, std::vector<double>& mean, std::vector<double>& var) {
  const auto N = x.dim(0), C = x.dim(1), P = x.dim(2) * x.dim(3);
  mean.assign(std::size_t(C), 0);
  var.assign(std::size_t(C), 0);
  for (std::int64_t c = 0; c < C; ++c) {
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t p = 0; p < P; ++p) mean[std::size_t(c)] += x[(n * C + c) * P + p];
    mean[std::size_t(c)] /= double(N * P);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t p = 0; p < P; ++p) {
        const double d = x[(n * C + c) * P + p] - mean[std::size_t(c)];
        var[std::size_t(c)] += d * d;
      }
    var[std::size_t(c)] /= double(N * P);
  }
}

double max_diff(const Tensor& a, const std::vector<double>& b) {
  double w = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) w = std::max(w, std::abs(a[i] - b[std::size_t(i)]));
  return w;
}
}  // namespace

TEST_CASE("frozen batch norm normalizes with the running statistics, in training too") {
  for (const Shape& shape : {Shape{3, 5, 7, 6}, Shape{3, 13, 4, 9}}) {
    Bn bn(shape, false);
    const Tensor x = testing::random_input(bn.g, bn.x, 1, -2.0f, 3.0f);
    const std::vector<double> mean(bn.running_mean().begin(), bn.running_mean().end()),
        var(bn.running_var().begin(), bn.running_var().end());
    bn.g.forward(true);
    CHECK(max_diff(bn.g.read(bn.y), reference(x, mean, var, bn.g.params()[0], bn.g.params()[1])) < 1e-4);
    // The running statistics are left alone.
    CHECK(bn.running_mean()[0] == float(mean[0]));
    CHECK(bn.running_var()[1] == float(var[1]));
    const auto res = testing::check_gradients(bn.g, {bn.x}, bn.y);
    CHECK_MESSAGE(res.ok, res.report);
  }
}

TEST_CASE("batch-statistics mode normalizes with the batch and updates running statistics like torch") {
  Bn bn({3, 5, 7, 6}, true);
  const Tensor x = testing::random_input(bn.g, bn.x, 2, -2.0f, 3.0f);
  const std::vector<double> old_mean(bn.running_mean().begin(), bn.running_mean().end()),
      old_var(bn.running_var().begin(), bn.running_var().end());
  std::vector<double> mean, var;
  batch_stats(x, mean, var);
  bn.g.forward(true);
  CHECK(max_diff(bn.g.read(bn.y), reference(x, mean, var, bn.g.params()[0], bn.g.params()[1])) < 1e-4);
  const double n = 3 * 7 * 6;
  for (std::size_t c = 0; c < 5; ++c) {
    CHECK(bn.running_mean()[c] == doctest::Approx(0.9 * old_mean[c] + 0.1 * mean[c]).epsilon(1e-5));
    CHECK(bn.running_var()[c] == doctest::Approx(0.9 * old_var[c] + 0.1 * var[c] * n / (n - 1)).epsilon(1e-5));
  }
  // Inference uses the (updated) running statistics.
  const std::vector<double> rm(bn.running_mean().begin(), bn.running_mean().end()),
      rv(bn.running_var().begin(), bn.running_var().end());
  bn.g.forward(false);
  CHECK(max_diff(bn.g.read(bn.y), reference(x, rm, rv, bn.g.params()[0], bn.g.params()[1])) < 1e-4);
}

TEST_CASE("batch-statistics gradients flow through the batch mean and variance") {
  for (const Shape& shape : {Shape{3, 5, 7, 6}, Shape{3, 13, 4, 9}}) {
    Bn bn(shape, true);
    testing::random_input(bn.g, bn.x, 3, -2.0f, 3.0f);
    const auto res = testing::check_gradients(bn.g, {bn.x}, bn.y, {.training = true});
    CHECK_MESSAGE(res.ok, res.report);
    CHECK(res.checked > 50);
  }
}

// With the input's gradient wanted, gamma/beta gradients come from oneDNN's
// backward (run by backward_data); without it, from the node's own sums.
TEST_CASE("gamma and beta gradients agree with and without the input's gradient, and match finite differences") {
  for (bool batch_stats : {false, true}) {
    CAPTURE(batch_stats);
    const Shape shape{3, 13, 5, 7};
    Bn with(shape, batch_stats, true), without(shape, batch_stats, false);
    const Tensor x = testing::random_input(with.g, with.x, 5, -2.0f, 3.0f);
    without.g.write(without.x, x);
    Rng rng(6);
    Tensor dy(shape);
    for (auto& v : dy.span()) v = rng.uniform(-1.0f, 1.0f);
    for (Bn* bn : {&with, &without}) {
      bn->g.select_all();
      bn->g.write_grad(bn->y, dy);
      bn->g.forward(true);
      bn->g.backward();
    }
    CHECK(with.g.plan().run_data[std::size_t(with.y)]);
    CHECK_FALSE(without.g.plan().run_data[std::size_t(without.y)]);
    for (int k = 0; k < 2; ++k)
      for (std::int64_t c = 0; c < shape[1]; ++c)
        CHECK(with.g.params()[k].grad[c] == doctest::Approx(without.g.params()[k].grad[c]).epsilon(1e-4));
    const auto res = testing::check_gradients(without.g, {without.x}, without.y, {.training = true});
    CHECK_MESSAGE(res.ok, res.report);
    CHECK(res.checked >= 26);
  }
}

TEST_CASE("batch norm params and buffers carry torch names; a channel mismatch names the layer") {
  Bn bn({3, 5, 2, 2}, false);
  CHECK(bn.g.params()[0].name == "bn1.weight");
  CHECK(bn.g.params()[1].name == "bn1.bias");
  CHECK(bn.g.params().buffer(0).name == "bn1.running_mean");
  CHECK(bn.g.params().buffer(1).name == "bn1.running_var");
  Context ctx(1);
  Graph g(ctx);
  const auto x = g.input("x", {2, 4, 3, 3});
  g.add<BatchNorm2d>({x}, "layer1.0.bn2", BatchNorm2dOptions{.num_features = 6});
  CHECK_THROWS_WITH_AS(g.finalize(), doctest::Contains("layer1.0.bn2"), Error);
}

}  // namespace layers_batchnorm_test
