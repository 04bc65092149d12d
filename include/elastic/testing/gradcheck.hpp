// Finite-difference gradient checker for any graph, and so for any layer a user
// writes: compares backward_data (w.r.t. inputs created with requires_grad) and
// every param's backward_weights against central differences of the scalar
// L = sum(r * y) for a fixed random r, computed in double precision.
#pragma once

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "elastic/core/random.hpp"
#include "elastic/graph/graph.hpp"

namespace elastic::testing {

struct GradCheckOptions {
  double eps = 1e-2;     // perturbation (inputs should be O(1))
  double rtol = 2e-2;    // relative tolerance
  double atol = 2e-3;    // absolute tolerance, scaled by the largest gradient of the tensor when it exceeds 1
  int max_checks = 48;   // checked elements per tensor (all if the tensor is smaller)
  bool training = true;  // forward mode
  std::uint64_t seed = 7;
};

struct GradCheckResult {
  bool ok = true;
  int checked = 0;
  double worst = 0;    // largest |analytic - numeric| / tolerance seen (ok iff <= 1)
  std::string report;  // one line per failure (at most 20)
};

namespace detail {
inline double objective(Graph& g, ValueId output, const Tensor& r, bool training) {
  g.forward(training);
  const Tensor y = g.read(output);
  double sum = 0;
  for (std::int64_t i = 0; i < y.numel(); ++i) sum += static_cast<double>(r[i]) * y[i];
  return sum;
}

inline std::vector<std::int64_t> sample_indices(std::int64_t n, int max_checks, Rng& rng) {
  std::vector<std::int64_t> idx;
  if (n <= max_checks) {
    for (std::int64_t i = 0; i < n; ++i) idx.push_back(i);
  } else {
    for (int i = 0; i < max_checks; ++i) idx.push_back(static_cast<std::int64_t>(rng.below(n)));
  }
  return idx;
}

inline void compare(GradCheckResult& res, const std::string& what, std::int64_t index, double analytic, double numeric,
                    double scale, const GradCheckOptions& o) {
  const double tol = o.atol * std::max(1.0, scale) + o.rtol * std::abs(numeric);
  const double ratio = std::abs(analytic - numeric) / tol;
  ++res.checked;
  res.worst = std::max(res.worst, ratio);
  if (!(ratio <= 1.0)) {
    res.ok = false;
    if (std::count(res.report.begin(), res.report.end(), '\n') < 20)
      res.report += fmt::format("{}[{}]: analytic {:.6g}, numeric {:.6g}\n", what, index, analytic, numeric);
  }
}
}  // namespace detail

// `g` is finalized, its inputs hold the point to check at, and `output` is
// pinned (an output). Every param is checked, and every input with requires_grad.
inline GradCheckResult check_gradients(Graph& g, const std::vector<ValueId>& inputs, ValueId output,
                                       const GradCheckOptions& o = {}) {
  Rng rng(o.seed);
  Tensor r(g.shape(output));
  for (auto& v : r.span()) v = rng.uniform(-1.0f, 1.0f);

  g.select_all();
  g.write_grad(output, r);
  g.params().zero_grads();
  g.forward(o.training);
  g.backward();

  GradCheckResult res;
  const auto& topo = g.topology();
  for (ValueId in : inputs) {
    if (!topo.nodes[in].requires_grad) continue;
    const Tensor analytic = g.read_grad(in);
    Tensor x = g.read(in);
    double scale = 0;
    for (float a : analytic.span()) scale = std::max(scale, double(std::abs(a)));
    for (auto i : detail::sample_indices(x.numel(), o.max_checks, rng)) {
      const float keep = x[i];
      x[i] = keep + static_cast<float>(o.eps);
      g.write(in, x);
      const double up = detail::objective(g, output, r, o.training);
      x[i] = keep - static_cast<float>(o.eps);
      g.write(in, x);
      const double down = detail::objective(g, output, r, o.training);
      x[i] = keep;
      g.write(in, x);
      detail::compare(res, fmt::format("input '{}'", g.node(in).name()), i, analytic[i], (up - down) / (2 * o.eps),
                      scale, o);
    }
  }
  for (auto& p : g.params().params()) {
    const std::vector<float> analytic(p.grad, p.grad + p.size());
    double scale = 0;
    for (float a : analytic) scale = std::max(scale, double(std::abs(a)));
    for (auto i : detail::sample_indices(p.size(), o.max_checks, rng)) {
      const float keep = p.value[i];
      p.value[i] = keep + static_cast<float>(o.eps);
      const double up = detail::objective(g, output, r, o.training);
      p.value[i] = keep - static_cast<float>(o.eps);
      const double down = detail::objective(g, output, r, o.training);
      p.value[i] = keep;
      detail::compare(res, fmt::format("param '{}'", p.name), i, analytic[i], (up - down) / (2 * o.eps), scale, o);
    }
  }
  return res;
}

// Fills a graph input with uniform values in [lo, hi] (seeded).
inline Tensor random_input(Graph& g, ValueId in, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  Rng rng(seed);
  Tensor x(g.shape(in));
  for (auto& v : x.span()) v = rng.uniform(lo, hi);
  g.write(in, x);
  return x;
}

// Largest |a[i] - b[i]| over two tensors of the same shape (refused otherwise).
inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) throw std::invalid_argument("max_abs_diff: tensors of different shapes");
  double w = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) w = std::max(w, std::abs(double(a[i]) - double(b[i])));
  return w;
}

// Largest |a[i]|.
inline double max_abs(const Tensor& a) {
  double w = 0;
  for (const float v : a.span()) w = std::max(w, std::abs(double(v)));
  return w;
}

}  // namespace elastic::testing
