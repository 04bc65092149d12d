#include "elastic/layers/batchnorm.hpp"

#include <optional>

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_batchnorm_test {

using namespace elastic;
using testing::max_abs_diff;

namespace {
struct Bn {
  Context ctx{2};
  Graph g{ctx};
  ValueId x, y;
  Bn(const Shape& shape, bool batch_stats, bool input_grad = true, std::optional<Activation> act = std::nullopt) {
    x = g.input("x", shape, input_grad);
    y = g.add<BatchNorm2d>({x}, "bn1", BatchNorm2dOptions{.num_features = shape[1], .activation = act});
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

// Inputs whose frozen batch-norm outputs lie in [-3, 9] but at least 0.05 away from the
// kinks of relu and relu6 (0 and 6), in NCHW: the central differences (eps 1e-3, on inputs
// and on gamma/beta) never straddle a kink.
Tensor away_from_kinks(Bn& bn, std::uint64_t seed) {
  const Shape shape = bn.g.shape(bn.x);
  const auto C = shape[1], P = shape[2] * shape[3];
  const auto& gamma = bn.g.params()[0];
  const auto& beta = bn.g.params()[1];
  Rng rng(seed);
  Tensor x(shape);
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    const auto c = (i / P) % C;
    float y = 0;
    do y = rng.uniform(-3.0f, 9.0f);
    while (std::abs(y) < 0.05f || std::abs(y - 6) < 0.05f);
    const float a = gamma.value[c] / std::sqrt(bn.running_var()[std::size_t(c)] + 1e-5f);
    x[i] = bn.running_mean()[std::size_t(c)] + (y - beta.value[c]) / a;
  }
  bn.g.write(bn.x, x);
  return x;
}

// The same layer as two nodes: batch norm, then the activation's own node.
struct Unfused {
  Context ctx{2};
  Graph g{ctx};
  ValueId x, bn, y;
  Unfused(const Shape& shape, Activation act) {
    x = g.input("x", shape, true);
    bn = g.add<BatchNorm2d>({x}, "bn1", BatchNorm2dOptions{.num_features = shape[1]});
    y = g.add<Eltwise>({bn}, "act", act);
    g.finalize(4);
  }
};
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

TEST_CASE("batch norm with relu or relu6 inside matches its definition and finite differences (frozen statistics)") {
  for (Activation act : {Activation::relu, Activation::relu6}) {
    for (const Shape& shape : {Shape{3, 5, 7, 6}, Shape{2, 24, 9, 11}}) {
      CAPTURE(static_cast<int>(act));
      Bn bn(shape, false, true, act);
      const Tensor x = away_from_kinks(bn, 11);
      const std::vector<double> mean(bn.running_mean().begin(), bn.running_mean().end()),
          var(bn.running_var().begin(), bn.running_var().end());
      bn.g.forward(true);
      auto want = reference(x, mean, var, bn.g.params()[0], bn.g.params()[1]);
      int clipped_low = 0, clipped_high = 0;
      for (double& v : want) {
        clipped_low += v < 0;
        clipped_high += v > 6 && act == Activation::relu6;
        v = std::max(v, 0.0);
        if (act == Activation::relu6) v = std::min(v, 6.0);
      }
      CHECK(clipped_low > 0);  // the kinks are in play
      if (act == Activation::relu6) CHECK(clipped_high > 0);
      CHECK(max_diff(bn.g.read(bn.y), want) < 1e-4);
      const auto res = testing::check_gradients(bn.g, {bn.x}, bn.y, {.eps = 1e-3});
      CHECK_MESSAGE(res.ok, res.report);
      CHECK(res.checked > 50);
    }
  }
}

// Against the two-node form (batch norm, then the activation node, each checked on its own
// above and in activation_test): outputs and every gradient, in both statistics modes, with
// the input's gradient wanted and not (gamma/beta summed in backward_data's sweep or in
// backward_weights' own), and with gamma/beta frozen (backward_data alone).
TEST_CASE("batch norm with an activation inside equals batch norm followed by the activation's node") {
  const Shape shape{4, 32, 6, 5};
  for (Activation act : {Activation::relu, Activation::relu6})
    for (bool batch_stats : {false, true})
      for (int mode = 0; mode < 3; ++mode) {  // 0: all trained; 1: no input gradient; 2: gamma/beta frozen
        CAPTURE(static_cast<int>(act));
        CAPTURE(batch_stats);
        CAPTURE(mode);
        Bn fused(shape, batch_stats, mode != 1, act);
        Unfused two(shape, act);
        two.g.node_as<BatchNorm2d>(two.bn).set_batch_stats(batch_stats);
        for (auto& v : fused.g.params()[0].values()) v *= 4;  // batch statistics reach relu6's top too
        for (int k = 0; k < 2; ++k) {
          const auto from = fused.g.params()[std::size_t(k)].values();
          std::copy(from.begin(), from.end(), two.g.params()[std::size_t(k)].values().begin());
          const auto stats = fused.g.params().buffer(std::size_t(k)).values();
          std::copy(stats.begin(), stats.end(), two.g.params().buffer(std::size_t(k)).values().begin());
        }
        Rng rng(21);
        Tensor x(shape), dy(shape);
        for (auto& v : x.span()) v = rng.uniform(-4.0f, 8.0f);
        for (auto& v : dy.span()) v = rng.uniform(-1.0f, 1.0f);
        const std::vector<bool> mask{mode != 2, mode != 2};
        fused.g.select(mask);
        two.g.select(mask);
        fused.g.write(fused.x, x);
        two.g.write(two.x, x);
        fused.g.write_grad(fused.y, dy);
        two.g.write_grad(two.y, dy);
        fused.g.params().zero_grads();
        two.g.params().zero_grads();
        fused.g.forward(true);
        two.g.forward(true);
        fused.g.backward();
        two.g.backward();
        const Tensor out = fused.g.read(fused.y);
        CHECK(max_abs_diff(out, two.g.read(two.y)) < 1e-5);
        int zero = 0, six = 0;
        for (float v : out.span()) {
          zero += v == 0.0f;
          six += v == 6.0f;
        }
        CHECK(zero > 0);
        if (act == Activation::relu6) CHECK(six > 0);
        CHECK(fused.g.plan().run_data[std::size_t(fused.y)] == (mode != 1));
        if (mode != 1) CHECK(max_abs_diff(fused.g.read_grad(fused.x), two.g.read_grad(two.x)) < 1e-5);
        for (std::size_t k = 0; k < 2; ++k)
          for (std::int64_t c = 0; c < shape[1]; ++c) {
            if (mode == 2) continue;
            CHECK(fused.g.params()[k].grad[c] == doctest::Approx(two.g.params()[k].grad[c]).epsilon(1e-4).scale(1e-3));
          }
        // The running statistics moved alike in batch-statistics mode.
        for (std::size_t c = 0; c < std::size_t(shape[1]); ++c)
          CHECK(fused.running_var()[c] == doctest::Approx(two.g.params().buffer(1).values()[c]).epsilon(1e-5));
      }
}

TEST_CASE("batch norm reads its output in backward only with an activation inside; others are refused by name") {
  CHECK_FALSE(BatchNorm2d("bn", {.num_features = 3}).data_reads().output);
  CHECK(BatchNorm2d("bn", {.num_features = 3, .activation = Activation::relu6}).data_reads().output);
  CHECK(BatchNorm2d("bn", {.num_features = 3, .activation = Activation::relu}).weights_reads().output);
  CHECK(BatchNorm2d::fuses(Activation::relu));
  CHECK_FALSE(BatchNorm2d::fuses(Activation::gelu));
  CHECK_THROWS_WITH_AS(BatchNorm2d("features.3.1", {.num_features = 3, .activation = Activation::hardswish}),
                       doctest::Contains("features.3.1"), Error);
  BatchNorm2d bn("bn", {.num_features = 3});
  CHECK_THROWS_WITH_AS(bn.fuse_activation(Activation::silu), doctest::Contains("silu"), Error);
  bn.fuse_activation(Activation::relu);
  CHECK(bn.activation() == Activation::relu);
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
