#include "elastic/method/importance_evaluator.hpp"

#include <csignal>
#include <filesystem>

#include <sys/resource.h>

#include <doctest/doctest.h>

#include "elastic/layers/linear.hpp"
#include "elastic/models/small_cnn.hpp"
#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace method_importance_evaluator_test {

using namespace elastic;

namespace {
// x (1, dims[0]) through linears dims[l-1] -> dims[l] (fc1, fc2, ...) to cross-entropy
// with label 1.
Model linear_chain(Context& ctx, const std::vector<std::int64_t>& dims) {
  auto g = std::make_unique<Graph>(ctx);
  const ValueId x = g->input("x", {1, dims[0]});
  ValueId h = x;
  for (std::size_t l = 1; l < dims.size(); ++l)
    h = g->add<Linear>({h}, fmt::format("fc{}", l), LinearOptions{.in_features = dims[l - 1], .out_features = dims[l]});
  return finish_model("linear_chain", std::move(g), x, h, 5);
}

// Its param gradients in double, in the store's order (per layer W (out x in), then b).
std::vector<double> chain_grads(const std::vector<double>& w, const std::vector<std::int64_t>& dims,
                                const std::vector<double>& x, int label) {
  const std::size_t L = dims.size() - 1;
  std::vector<std::size_t> at(L);  // where layer l's W starts
  std::size_t k = 0;
  for (std::size_t l = 0; l < L; ++l) {
    at[l] = k;
    k += std::size_t(dims[l + 1] * dims[l] + dims[l + 1]);
  }
  std::vector<std::vector<double>> h{x};
  for (std::size_t l = 0; l < L; ++l) {
    const std::size_t in = std::size_t(dims[l]), out = std::size_t(dims[l + 1]);
    std::vector<double> z(out);
    for (std::size_t i = 0; i < out; ++i) {
      z[i] = w[at[l] + out * in + i];
      for (std::size_t j = 0; j < in; ++j) z[i] += w[at[l] + i * in + j] * h[l][j];
    }
    h.push_back(z);
  }
  const auto& z = h.back();
  const double top = *std::max_element(z.begin(), z.end());
  double sum = 0;
  for (double v : z) sum += std::exp(v - top);
  std::vector<double> dz(z.size()), g(w.size(), 0.0);
  for (std::size_t i = 0; i < z.size(); ++i) dz[i] = std::exp(z[i] - top) / sum - (int(i) == label);
  for (std::size_t l = L; l-- > 0;) {
    const std::size_t in = std::size_t(dims[l]), out = std::size_t(dims[l + 1]);
    std::vector<double> below(in, 0.0);
    for (std::size_t i = 0; i < out; ++i) {
      g[at[l] + out * in + i] = dz[i];
      for (std::size_t j = 0; j < in; ++j) {
        g[at[l] + i * in + j] = dz[i] * h[l][j];
        below[j] += dz[i] * w[at[l] + i * in + j];
      }
    }
    dz = below;
  }
  return g;
}

// Writes the model's one input row (x0, x1) and label 1.
void set_point(Model& m, double x0, double x1) {
  Tensor xin({1, 2});
  xin[0] = float(x0);
  xin[1] = float(x1);
  m.graph->write(m.images, xin);
  m.loss_node().set_labels(std::vector<std::int32_t>{1});
}

// The small CNN (batch 4) on a random batch drawn with `seed`.
Model small_cnn_on_batch(Context& ctx, std::uint64_t seed) {
  Model m = small_cnn(ctx, {.batch = 4, .width1 = 8, .width2 = 8});
  testing::random_input(*m.graph, m.images, seed);
  m.loss_node().set_labels(std::vector<std::int32_t>{1, 2, 3, 4});
  return m;
}
}  // namespace

TEST_CASE("loss-drop importance equals a hand computation on a tiny model") {
  Context ctx(1);
  const std::vector<std::int64_t> dims{2, 3, 2};  // fc1 (2 -> 3), fc2 (3 -> 2)
  Model m = linear_chain(ctx, dims);
  auto& ps = m.params();
  std::vector<double> w;
  for (const auto& p : ps.params())
    for (float v : p.values()) w.push_back(v);
  const std::vector<double> x{0.7, -1.3};
  set_point(m, x[0], x[1]);
  const float lr = 0.5f;
  SGDW opt({.momentum = 0.0f, .weight_decay = 0.0f});
  ImportanceEvaluator<> eval;
  const std::vector<bool> all(ps.size(), true);
  const auto scores = eval.evaluate(m, opt, lr, ImportanceMetric::loss_drop, 0, all);
  REQUIRE(scores.size() == 2);

  const auto g0 = chain_grads(w, dims, x, 1);
  std::vector<double> w1 = w;
  for (std::size_t i = 0; i < w.size(); ++i) w1[i] -= lr * g0[i];
  const auto g1 = chain_grads(w1, dims, x, 1);
  double unit[2] = {0, 0};
  for (std::size_t i = 0; i < w.size(); ++i) unit[i < 9 ? 0 : 1] += -g1[i] * (w1[i] - w[i]);
  const double largest = std::max(std::abs(unit[0]), std::abs(unit[1]));
  CHECK(scores[0] == doctest::Approx(unit[0] / largest).epsilon(1e-3));
  CHECK(scores[1] == doctest::Approx(unit[1] / largest).epsilon(1e-3));
  CHECK(std::max(std::abs(scores[0]), std::abs(scores[1])) == doctest::Approx(1.0));

  // Scored alone, fc2 moves and fc1 stays at w0 in both passes.
  const auto fc2 = eval.evaluate(m, opt, lr, ImportanceMetric::loss_drop, 0, all, {{false, true}, {}});
  std::vector<double> w1_top = w;
  for (std::size_t i = 9; i < w.size(); ++i) w1_top[i] -= lr * g0[i];
  const auto g1_top = chain_grads(w1_top, dims, x, 1);
  double top = 0;
  for (std::size_t i = 9; i < w.size(); ++i) top += -g1_top[i] * (w1_top[i] - w[i]);
  CHECK(fc2[0] == 0);
  CHECK(fc2[1] == doctest::Approx(top / std::abs(top)));
  CHECK(std::abs(top - unit[1]) > 1e-6 * std::abs(top));  // fc1's move changes fc2's score: a different figure

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

// A scope of two units (fc2, fc3) of three: fc1 stays at w0 in both passes, fc2 and fc3 take
// the previewed step, and their scores keep their ratio (normalized by the larger). Moving fc1
// too changes those scores by far more than the tolerance (checked), so a probe that moved
// every unit and reported only the scope's would fail.
TEST_CASE("a scoped loss-drop probe moves only the scope's units and scores them by hand's figures") {
  Context ctx(1);
  const std::vector<std::int64_t> dims{2, 3, 3, 2};
  Model m = linear_chain(ctx, dims);
  auto& ps = m.params();
  std::vector<double> w;
  std::vector<int> unit_of;  // per value
  for (std::size_t k = 0; k < ps.size(); ++k)
    for (float v : ps[k].values()) {
      w.push_back(v);
      unit_of.push_back(int(k / 2));
    }
  const std::vector<double> x{0.7, -1.3};
  set_point(m, x[0], x[1]);
  const float lr = 0.5f;
  SGDW opt({.momentum = 0.0f, .weight_decay = 0.0f});
  ImportanceEvaluator<> eval;
  const std::vector<bool> all(ps.size(), true), scope{false, true, true};
  const auto scores = eval.evaluate(m, opt, lr, ImportanceMetric::loss_drop, 0, all, {scope, {}});
  REQUIRE(scores.size() == 3);

  const auto g0 = chain_grads(w, dims, x, 1);
  // Per-unit loss drop with the units in `moved` stepped: -g1 . (w1 - w0).
  const auto by_hand = [&](const std::vector<bool>& moved) {
    std::vector<double> w1 = w;
    for (std::size_t i = 0; i < w.size(); ++i)
      if (moved[std::size_t(unit_of[i])]) w1[i] -= lr * g0[i];
    const auto g1 = chain_grads(w1, dims, x, 1);
    std::vector<double> unit(3, 0.0);
    for (std::size_t i = 0; i < w.size(); ++i) unit[std::size_t(unit_of[i])] += -g1[i] * (w1[i] - w[i]);
    return unit;
  };
  const auto hand = by_hand(scope), everything = by_hand({true, true, true});
  const double largest = std::max(std::abs(hand[1]), std::abs(hand[2]));
  CHECK(scores[0] == 0);
  CHECK(scores[1] == doctest::Approx(hand[1] / largest).epsilon(1e-3));
  CHECK(scores[2] == doctest::Approx(hand[2] / largest).epsilon(1e-3));
  // The scores a probe that moved fc1 too would give, normalized alike, lie well outside the
  // tolerance above (about 2e-3) for at least one unit.
  const double le = std::max(std::abs(everything[1]), std::abs(everything[2]));
  CHECK(std::max(std::abs(everything[1] / le - hand[1] / largest), std::abs(everything[2] / le - hand[2] / largest)) >
        1e-2);
}

TEST_CASE("an evaluation leaves weights, statistics, optimizer state and plan bit-identical") {
  Context ctx(2);
  Model m = small_cnn_on_batch(ctx, 3);
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

TEST_CASE(
    "spilled to a file or kept in memory the probe scores alike; a scope scores its units; a failed spill "
    "leaves the weights as they were") {
  Context ctx(2);
  Model m = small_cnn_on_batch(ctx, 5);
  SGDW opt;
  const std::vector<bool> all(m.params().size(), true);
  m.graph->forward(true);
  m.graph->backward();
  opt.step(m.params(), all, 0.1f);  // momentum to preview from
  const auto values = m.params().value_arena();
  const std::vector<float> w_before(values.begin(), values.end());
  const auto unchanged = [&] {
    return std::memcmp(w_before.data(), values.data(), values.size() * sizeof(float)) == 0;
  };
  ImportanceEvaluator<> eval;
  const auto dir = std::filesystem::temp_directory_path();
  const auto in_memory = eval.evaluate(m, opt, 0.1f, ImportanceMetric::loss_drop, 3, all);
  CHECK(unchanged());
  const auto in_file = eval.evaluate(m, opt, 0.1f, ImportanceMetric::loss_drop, 3, all, {{}, dir});
  CHECK(unchanged());
  CHECK(in_file == in_memory);
  const auto units = selection_units(*m.graph);
  const std::size_t n = units.size();
  CHECK(eval.evaluate(m, opt, 0.1f, ImportanceMetric::loss_drop, 3, all, {std::vector<bool>(n, true), {}}) ==
        in_memory);

  // The upper half alone: the lower units score 0, the upper ones their own figures.
  std::vector<bool> upper(n, false);
  for (std::size_t u = n / 2; u < n; ++u) upper[u] = true;
  const auto scoped = eval.evaluate(m, opt, 0.1f, ImportanceMetric::loss_drop, 3, all, {upper, dir});
  CHECK(unchanged());
  for (std::size_t u = 0; u < n; ++u) {
    CAPTURE(u);
    if (!upper[u]) CHECK(scoped[u] == 0);
  }
  CHECK(std::any_of(scoped.begin(), scoped.end(), [](double v) { return v != 0; }));
  CHECK(scoped != in_memory);

  // The file may hold the last unit's params and one float more: the probe moves that unit's
  // weights, fails on the next, and puts the moved ones back.
  std::int64_t head = 0;
  for (int k : units.back().params) head += m.params()[std::size_t(k)].size() * std::int64_t(sizeof(float));
  rlimit old_limit{};
  REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
  auto* old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old_limit;
  small.rlim_cur = rlim_t(head + 4);
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
  CHECK_THROWS_WITH_AS(eval.evaluate(m, opt, 0.1f, ImportanceMetric::loss_drop, 3, all, {{}, dir}),
                       doctest::Contains(("cannot write the spill file in '" + dir.string() + "'").c_str()), Error);
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  std::signal(SIGXFSZ, old_handler);
  CHECK(unchanged());
  CHECK(eval.evaluate(m, opt, 0.1f, ImportanceMetric::loss_drop, 3, all, {{}, dir}) == in_memory);
  // A directory that is not there is named.
  CHECK_THROWS_WITH_AS(eval.evaluate(m, opt, 0.1f, ImportanceMetric::loss_drop, 3, all, {{}, "/nonexistent/spill"}),
                       doctest::Contains("cannot create a spill file in '/nonexistent/spill'"), Error);
  CHECK(unchanged());
}

}  // namespace method_importance_evaluator_test
