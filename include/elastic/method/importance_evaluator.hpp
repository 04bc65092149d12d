// ImportanceEvaluator: scores selection units on the probe batch already loaded
// into the model (docs/method.md, "Importance"). The loss-drop metric takes one full optimizer
// step, measures the gradient at the new weights, and scores each tensor by
// I[k] = -sum(g1[k] * dw0[k]), a first-order estimate of how much training it
// lowers the loss; unit scores are sums over the unit's tensors, normalized by
// the largest magnitude. Weights, batch-norm statistics, optimizer state and the
// installed plan are restored bit for bit afterwards. The reference's two
// alternatives, weight magnitude and gradient magnitude, are here too.
#pragma once

#include <array>
#include <cmath>
#include <vector>

#include "elastic/core/host_math.hpp"
#include "elastic/method/units.hpp"
#include "elastic/models/model.hpp"
#include "elastic/optim/optimizer.hpp"

namespace elastic {

enum class ImportanceMetric { loss_drop, weight_magnitude, grad_magnitude };

template <class Opt = Optimizer>
class ImportanceEvaluator {
 public:
  // Unit scores (forward order) of the probe batch in `m`'s input and labels.
  // `step` fixes the dropout masks of both passes; `current_mask` (params) is
  // reinstalled at the end.
  std::vector<double> evaluate(Model& m, Opt& opt, float lr, ImportanceMetric metric, std::uint64_t step,
                               const std::vector<bool>& current_mask) {
    Graph& g = *m.graph;
    ParamStore& ps = g.params();
    const auto units = selection_units(g);
    std::vector<double> per_param(ps.size(), 0.0);
    if (metric == ImportanceMetric::weight_magnitude) {
      for (std::size_t k = 0; k < ps.size(); ++k) per_param[k] = abs_sum(ps[k].values());
      return normalize(per_unit(units, per_param));
    }
    const auto values = ps.value_arena();
    const auto n = static_cast<std::int64_t>(values.size());
    w0_.resize(values.size());
    host::copy(w0_.data(), values.data(), n);
    buffers0_.clear();
    for (const auto& b : ps.buffers()) buffers0_.insert(buffers0_.end(), b.values().begin(), b.values().end());
    const std::vector<bool> all(ps.size(), true);

    g.select(all);
    g.set_step(step);
    g.forward(true);
    g.backward();
    if (metric == ImportanceMetric::grad_magnitude) {
      for (std::size_t k = 0; k < ps.size(); ++k) per_param[k] = abs_sum(ps[k].grads());
    } else {
      opt.preview(ps, all, lr);  // w1: the step training would take, the optimizer's state untouched
      // dw0 = w1 - w0, kept in a copy so the gradients of the second pass can be taken at w1.
      dw_.resize(values.size());
      host::for_chunks(n, [&](std::int64_t b, std::int64_t c) {
        host::array(dw_.data() + b, c) = host::array(values.data() + b, c) - host::array(w0_.data() + b, c);
      });
      restore_buffers(ps);  // the second pass sees the same batch-norm statistics
      g.forward(true);
      g.backward();
      for (std::size_t k = 0; k < ps.size(); ++k)
        per_param[k] = -dot(ps[k].grad, dw_.data() + ps[k].offset, ps[k].size());
    }
    host::copy(values.data(), w0_.data(), n);
    restore_buffers(ps);
    g.select(current_mask);
    return normalize(per_unit(units, per_param));
  }

 private:
  // sum a[i] * b[i] in double, over 64 fixed chunks summed in order: the same
  // result on any thread count (reruns and resumed runs select identically).
  static double dot(const float* a, const float* b, std::int64_t n) {
    constexpr int kChunks = 64;
    std::array<double, kChunks> part{};
#pragma omp parallel for schedule(static) if (n > host::kParallelMin)
    for (int c = 0; c < kChunks; ++c) {
      const std::int64_t begin = n * c / kChunks, count = n * (c + 1) / kChunks - begin;
      part[std::size_t(c)] =
          (host::array(a + begin, count).cast<double>() * host::array(b + begin, count).cast<double>()).sum();
    }
    double s = 0;
    for (double p : part) s += p;
    return s;
  }

  static double abs_sum(std::span<const float> v) {
    return host::array(v.data(), std::int64_t(v.size())).abs().cast<double>().sum();
  }

  static std::vector<double> per_unit(const std::vector<Unit>& units, const std::vector<double>& per_param) {
    std::vector<double> out;
    for (const auto& u : units) {
      double s = 0;
      for (int k : u.params) s += per_param[static_cast<std::size_t>(k)];
      out.push_back(s);
    }
    return out;
  }

  static std::vector<double> normalize(std::vector<double> v) {
    double largest = 0;
    for (double x : v) largest = std::max(largest, std::abs(x));
    if (largest > 0)
      for (double& x : v) x /= largest;
    return v;
  }

  void restore_buffers(ParamStore& ps) const {
    std::size_t at = 0;
    for (auto& b : ps.buffers()) {
      const auto v = b.values();
      std::copy(buffers0_.begin() + static_cast<std::ptrdiff_t>(at),
                buffers0_.begin() + static_cast<std::ptrdiff_t>(at + v.size()), v.begin());
      at += v.size();
    }
  }

  std::vector<float> w0_, dw_, buffers0_;  // reused across evaluations
};

}  // namespace elastic
