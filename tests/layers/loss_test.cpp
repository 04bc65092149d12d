#include "elastic/layers/loss.hpp"

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_loss_test {

using namespace elastic;

namespace {
double reference_loss(const Tensor& z, const std::vector<std::int32_t>& labels) {
  const auto C = z.dim(1);
  double sum = 0;
  int count = 0;
  for (std::size_t n = 0; n < labels.size(); ++n) {
    if (labels[n] < 0) continue;
    double m = -1e300;
    for (std::int64_t c = 0; c < C; ++c) m = std::max(m, double(z[std::int64_t(n) * C + c]));
    double s = 0;
    for (std::int64_t c = 0; c < C; ++c) s += std::exp(z[std::int64_t(n) * C + c] - m);
    sum += -(z[std::int64_t(n) * C + labels[n]] - m - std::log(s));
    ++count;
  }
  return sum / count;
}

struct LossGraph {
  Context ctx{2};
  Graph g{ctx};
  ValueId z, loss;
  explicit LossGraph(Shape shape) {
    z = g.input("logits", shape, true);
    loss = g.add<SoftmaxCrossEntropy>({z}, "loss");
    g.finalize();
  }
  SoftmaxCrossEntropy& node() { return g.node_as<SoftmaxCrossEntropy>(loss); }
};
}  // namespace

TEST_CASE("cross-entropy equals the mean negative log-softmax of the labels; gradients by finite differences") {
  LossGraph t({3, 7});
  const std::vector<std::int32_t> labels{2, 6, 0};
  t.node().set_labels(labels);
  const Tensor z = testing::random_input(t.g, t.z, 4, -3.0f, 3.0f);
  t.g.forward(true);
  CHECK(t.g.read(t.loss)[0] == doctest::Approx(reference_loss(z, labels)).epsilon(1e-5));
  CHECK(t.node().loss() == doctest::Approx(reference_loss(z, labels)).epsilon(1e-5));
  const auto res = testing::check_gradients(t.g, {t.z}, t.loss);
  CHECK_MESSAGE(res.ok, res.report);
  CHECK(res.checked == 21);
}

TEST_CASE("extreme logits give a finite loss equal to the reference") {
  LossGraph t({2, 3});
  t.node().set_labels(std::vector<std::int32_t>{1, 0});
  Tensor z({2, 3});
  const float v[] = {1000, -1000, 0, -1000, 1000, 999};
  std::copy(std::begin(v), std::end(v), z.data());
  t.g.write(t.z, z);
  t.g.forward(false);
  const double loss = t.node().loss();
  CHECK(std::isfinite(loss));
  // Row 0: -log softmax = 2000; row 1: 2000 + log(1 + e^-1).
  CHECK(loss == doctest::Approx((2000.0 + 2000.0 + std::log1p(std::exp(-1.0))) / 2).epsilon(1e-6));
  CHECK(t.node().correct() == 0);
}

TEST_CASE("accuracy counts argmax hits; ignored rows count nowhere") {
  LossGraph t({4, 3});
  Tensor z({4, 3});
  const float v[] = {3, 1, 0, 0, 2, 1, 0, 0, 5, 9, 0, 0};
  std::copy(std::begin(v), std::end(v), z.data());
  t.g.write(t.z, z);
  t.node().set_labels(std::vector<std::int32_t>{0, 1, 1, SoftmaxCrossEntropy::kIgnore});
  t.g.forward(false);
  CHECK(t.node().correct() == 2);
  CHECK(t.node().count() == 3);
  CHECK(t.node().loss() == doctest::Approx(reference_loss(z, {0, 1, 1, -1})).epsilon(1e-5));
  // The padding row gets no gradient.
  t.g.write_grad(t.loss, Tensor({1}, 1.0f));
  t.g.backward();
  const Tensor dz = t.g.read_grad(t.z);
  for (int c = 0; c < 3; ++c) CHECK(dz[9 + c] == 0.0f);
  CHECK(dz[0] < 0);  // the true class's logit is pushed up
}

TEST_CASE("labels outside the classes or too many labels are errors naming the layer") {
  LossGraph t({2, 3});
  CHECK_THROWS_WITH_AS(t.node().set_labels(std::vector<std::int32_t>{0, 3}), doctest::Contains("label 3"), Error);
  CHECK_THROWS_WITH_AS(t.node().set_labels(std::vector<std::int32_t>{0, 1, 2}), doctest::Contains("'loss'"), Error);
}

}  // namespace layers_loss_test
