#include "elastic/method/importance_evaluator.hpp"

#include <doctest/doctest.h>

#include "elastic/layers/linear.hpp"
#include "elastic/models/small_cnn.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace method_importance_evaluator_test {

using namespace elastic;

namespace {
// x (1, 2) -> fc1 (2 -> 3) -> fc2 (3 -> 2) -> cross-entropy with label 1.
Model two_linear(Context& ctx) {
  auto g = std::make_unique<Graph>(ctx);
  const ValueId x = g->input("x", {1, 2});
  const ValueId h = g->add<Linear>({x}, "fc1", LinearOptions{.in_features = 2, .out_features = 3});
  const ValueId z = g->add<Linear>({h}, "fc2", LinearOptions{.in_features = 3, .out_features = 2});
  return finish_model("two_linear", std::move(g), x, z, 5);
}

// Gradients of the two-layer model in double: returns {dW1 (3x2), db1 (3), dW2 (2x3), db2 (2)} flat.
std::vector<double> grads(const std::vector<double>& w, const double x[2], int label) {
  const double* W1 = w.data();
  const double* b1 = W1 + 6;
  const double* W2 = b1 + 3;
  const double* b2 = W2 + 6;
  double h[3], z[2];
  for (int i = 0; i < 3; ++i) h[i] = W1[2 * i] * x[0] + W1[2 * i + 1] * x[1] + b1[i];
  for (int i = 0; i < 2; ++i) z[i] = W2[3 * i] * h[0] + W2[3 * i + 1] * h[1] + W2[3 * i + 2] * h[2] + b2[i];
  const double m = std::max(z[0], z[1]), e0 = std::exp(z[0] - m), e1 = std::exp(z[1] - m);
  const double dz[2] = {e0 / (e0 + e1) - (label == 0), e1 / (e0 + e1) - (label == 1)};
  std::vector<double> g(17, 0.0);
  double dh[3] = {0, 0, 0};
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) {
      g[9 + 3 * i + j] = dz[i] * h[j];
      dh[j] += dz[i] * W2[3 * i + j];
    }
  for (int i = 0; i < 2; ++i) g[15 + i] = dz[i];
  for (int i = 0; i < 3; ++i) {
    g[2 * i] = dh[i] * x[0];
    g[2 * i + 1] = dh[i] * x[1];
    g[6 + i] = dh[i];
  }
  return g;
}
}  // namespace

TEST_CASE("loss-drop importance equals a hand computation on a tiny model") {
  Context ctx(1);
  Model m = two_linear(ctx);
  auto& ps = m.params();
  std::vector<double> w;
  for (const auto& p : ps.params())
    for (float v : p.values()) w.push_back(v);
  const double x[2] = {0.7, -1.3};
  Tensor xin({1, 2});
  xin[0] = float(x[0]);
  xin[1] = float(x[1]);
  m.graph->write(m.images, xin);
  m.loss_node().set_labels(std::vector<std::int32_t>{1});
  const float lr = 0.5f;
  SGDW opt({.momentum = 0.0f, .weight_decay = 0.0f});
  ImportanceEvaluator<> eval;
  const std::vector<bool> all(ps.size(), true);
  const auto scores = eval.evaluate(m, opt, lr, ImportanceMetric::loss_drop, 0, all);
  REQUIRE(scores.size() == 2);

  const auto g0 = grads(w, x, 1);
  std::vector<double> w1 = w;
  for (std::size_t i = 0; i < w.size(); ++i) w1[i] -= lr * g0[i];
  const auto g1 = grads(w1, x, 1);
  double unit[2] = {0, 0};
  for (std::size_t i = 0; i < w.size(); ++i) unit[i < 9 ? 0 : 1] += -g1[i] * (w1[i] - w[i]);
  const double largest = std::max(std::abs(unit[0]), std::abs(unit[1]));
  CHECK(scores[0] == doctest::Approx(unit[0] / largest).epsilon(1e-3));
  CHECK(scores[1] == doctest::Approx(unit[1] / largest).epsilon(1e-3));
  CHECK(std::max(std::abs(scores[0]), std::abs(scores[1])) == doctest::Approx(1.0));

  // Gradient magnitude: sum |g0| per unit, normalized.
  const auto gm = eval.evaluate(m, opt, lr, ImportanceMetric::grad_magnitude, 0, all);
  double gu[2] = {0, 0};
  for (std::size_t i = 0; i < w.size(); ++i) gu[i < 9 ? 0 : 1] += std::abs(g0[i]);
  CHECK(gm[0] / gm[1] == doctest::Approx(gu[0] / gu[1]).epsilon(1e-4));
  // Weight magnitude: sum |w| per unit.
  const auto wm = eval.evaluate(m, opt, lr, ImportanceMetric::weight_magnitude, 0, all);
  double wu[2] = {0, 0};
  for (std::size_t i = 0; i < w.size(); ++i) wu[i < 9 ? 0 : 1] += std::abs(w[i]);
  CHECK(wm[0] / wm[1] == doctest::Approx(wu[0] / wu[1]).epsilon(1e-5));
}

TEST_CASE("an evaluation leaves weights, statistics, optimizer state and plan bit-identical") {
  Context ctx(2);
  Model m = small_cnn(ctx, {.batch = 4, .width1 = 8, .width2 = 8});
  Rng rng(3);
  Tensor x(m.input_shape);
  for (auto& v : x.span()) v = rng.normal();
  m.graph->write(m.images, x);
  m.loss_node().set_labels(std::vector<std::int32_t>{1, 2, 3, 4});
  for (int which = 0; which < 2; ++which) {
    std::unique_ptr<Optimizer> opt;
    if (which == 0)
      opt = std::make_unique<SGDW>(SGDWOptions{});
    else
      opt = std::make_unique<Adam>();
    CAPTURE(opt->name());
    const std::vector<bool> all(m.params().size(), true);
    // Some optimizer history first, so there is state to preserve.
    m.graph->forward(true);
    m.graph->backward();
    opt->step(m.params(), all, 0.1f);
    std::vector<bool> partial(m.params().size(), false);
    partial.back() = true;
    m.graph->select(partial);
    const auto values = m.params().value_arena();
    const std::vector<float> w_before(values.begin(), values.end());
    std::vector<float> stats_before;
    for (const auto& b : m.params().buffers())
      stats_before.insert(stats_before.end(), b.values().begin(), b.values().end());
    const auto state_before = opt->state();
    ImportanceEvaluator<> eval;
    const auto scores = eval.evaluate(m, *opt, 0.1f, ImportanceMetric::loss_drop, 7, partial);
    CHECK(scores.size() == selection_units(*m.graph).size());
    CHECK(std::memcmp(w_before.data(), values.data(), values.size() * sizeof(float)) == 0);
    std::vector<float> stats_after;
    for (const auto& b : m.params().buffers())
      stats_after.insert(stats_after.end(), b.values().begin(), b.values().end());
    CHECK(stats_after == stats_before);
    CHECK(opt->state() == state_before);
    CHECK(m.graph->plan().selected == partial);
    bool any_nonzero = false;
    for (double s : scores) any_nonzero = any_nonzero || s != 0;
    CHECK(any_nonzero);
  }
}

}  // namespace method_importance_evaluator_test
