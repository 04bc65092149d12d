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
    buffers0_.clear();
    for (const auto& b : ps.buffers()) buffers0_.insert(buffers0_.end(), b.values().begin(), b.values().end());
    const std::vector<bool> all(ps.size(), true);
    const bool streaming = ps.streaming();

    // Gradients are streamed: each node's are used as soon as its backward_weights has run.
    g.select(all);
    g.stream_grads(true);
    g.set_step(step);
    g.forward(true);
    if (metric == ImportanceMetric::grad_magnitude) {
      g.backward([&](int i) {
        for (int k : g.node(i).param_ids()) per_param[std::size_t(k)] = abs_sum(ps[std::size_t(k)].grads());
      });
    } else {
      // w1, the step training would take (the optimizer's state untouched), into a copy of the
      // weights: the rest of the pass still runs at w0.
      w1_.resize(values.size());
      g.backward([&](int i) {
        for (int k : g.node(i).param_ids()) opt.preview(ps, std::size_t(k), w1_.data() + ps[std::size_t(k)].offset, lr);
      });
      w0_.resize(values.size());
      host::copy(w0_.data(), values.data(), n);
      host::copy(values.data(), w1_.data(), n);
      restore_buffers(ps);  // the second pass sees the same batch-norm statistics
      // The gradient at w1 against dw0 = w1 - w0.
      g.forward(true);
      g.backward([&](int i) {
        for (int k : g.node(i).param_ids()) {
          const Param& p = ps[std::size_t(k)];
          per_param[std::size_t(k)] = -dot(p.grad, p.value, w0_.data() + p.offset, p.size());
        }
      });
      host::copy(values.data(), w0_.data(), n);
      // The copies take the weights' memory twice: training steps get it back.
      std::vector<float>().swap(w0_);
      std::vector<float>().swap(w1_);
      opt.release_preview();
    }
    g.stream_grads(streaming);
    restore_buffers(ps);
    g.select(current_mask);
    return normalize(per_unit(units, per_param));
  }

  // Bytes the probe holds besides the model's own buffers: two copies of the weights for
  // the loss-drop metric (and the optimizer's preview scratch), none for the others.
  static std::int64_t extra_bytes(const ParamStore& ps, ImportanceMetric metric) {
    return metric == ImportanceMetric::loss_drop ? 2 * ps.grad_bytes() : 0;
  }

 private:
  // sum g[i] * (w1[i] - w0[i]) in double (the difference in float), over 64 fixed chunks
  // summed in order: the same result on any thread count (reruns and resumed runs select
  // identically).
  static double dot(const float* g, const float* w1, const float* w0, std::int64_t n) {
    constexpr int kChunks = 64;
    std::array<double, kChunks> part{};
#pragma omp parallel for schedule(static) if (n > host::kParallelMin)
    for (int c = 0; c < kChunks; ++c) {
      const std::int64_t begin = n * c / kChunks, count = n * (c + 1) / kChunks - begin;
      part[std::size_t(c)] = (host::array(g + begin, count).cast<double>() *
                              (host::array(w1 + begin, count) - host::array(w0 + begin, count)).cast<double>())
                                 .sum();
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

  std::vector<float> w0_, w1_, buffers0_;  // the probe's copies (w0_, w1_ freed after it)
};

}  // namespace elastic
