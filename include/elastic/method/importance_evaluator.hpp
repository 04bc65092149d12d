// ImportanceEvaluator: scores selection units on the probe batch already loaded
// into the model (docs/method.md, "Importance"). The loss-drop metric takes one full optimizer
// step, measures the gradient at the new weights, and scores each tensor by
// I[k] = -sum(g1[k] * dw0[k]), a first-order estimate of how much training it
// lowers the loss; unit scores are sums over the unit's tensors, normalized by
// the largest magnitude. Weights, batch-norm statistics, optimizer state and the
// installed plan are restored bit for bit afterwards. The reference's two
// alternatives, weight magnitude and gradient magnitude, are here too.
//
// Memory: gradients are streamed, and the loss-drop step moves each node's weights to w1 in
// place as soon as its backward has run (no node below reads them), keeping w0 in a spill (in
// memory, or in a temporary file when the memory budget needs it); the second pass reads w0
// back node by node, scores and restores it. A scope (a subset of units) scores only those
// units, running the plan that trains them: the others stay at w0 and score 0.
#pragma once

#include <array>
#include <cmath>
#include <filesystem>
#include <vector>

#include "elastic/core/host_math.hpp"
#include "elastic/io/spill.hpp"
#include "elastic/method/units.hpp"
#include "elastic/models/model.hpp"
#include "elastic/optim/optimizer.hpp"

namespace elastic {

enum class ImportanceMetric { loss_drop, weight_magnitude, grad_magnitude };

// Where the probe runs: the units it scores (empty: all) and where the loss-drop step keeps
// the weights it moves (empty: in memory; a directory: a temporary file there).
struct ProbeScope {
  std::vector<bool> units;
  std::filesystem::path spill_dir;
};

template <class Opt = Optimizer>
class ImportanceEvaluator {
 public:
  // Unit scores (forward order) of the probe batch in `m`'s input and labels.
  // `step` fixes the dropout masks of both passes; `current_mask` (params) is
  // reinstalled at the end.
  std::vector<double> evaluate(Model& m, Opt& opt, float lr, ImportanceMetric metric, std::uint64_t step,
                               const std::vector<bool>& current_mask, const ProbeScope& scope = {}) {
    Graph& g = *m.graph;
    ParamStore& ps = g.params();
    const auto units = selection_units(g);
    std::vector<double> per_param(ps.size(), 0.0);
    if (metric == ImportanceMetric::weight_magnitude) {
      for (std::size_t k = 0; k < ps.size(); ++k) per_param[k] = abs_sum(ps[k].values());
      return normalize(per_unit(units, per_param));
    }
    if (!scope.units.empty() && scope.units.size() != units.size())
      fail("importance probe: the scope has {} entries for {} units", scope.units.size(), units.size());
    const std::vector<bool> scored =
        scope.units.empty() ? std::vector<bool>(ps.size(), true) : param_mask(units, scope.units, ps.size());
    buffers0_.clear();
    for (const auto& b : ps.buffers()) buffers0_.insert(buffers0_.end(), b.values().begin(), b.values().end());
    const bool streaming = ps.streaming();

    // Gradients are streamed: each node's are used as soon as its backward_weights has run.
    g.select(scored);
    g.stream_grads(true);
    g.set_step(step);
    g.forward(true);
    if (metric == ImportanceMetric::grad_magnitude) {
      g.backward([&](int i) {
        for (int k : g.node(i).param_ids()) per_param[std::size_t(k)] = abs_sum(ps[std::size_t(k)].grads());
      });
    } else {
      loss_drop(g, ps, opt, lr, scored, scope.spill_dir, per_param);
    }
    g.stream_grads(streaming);
    restore_buffers(ps);
    g.select(current_mask);
    return normalize(per_unit(units, per_param));
  }

  // Bytes the probe holds besides the model's own buffers and the optimizer's preview
  // scratch: for the loss-drop metric, w0 of the scored params (`scored`, params; none when
  // spilled to a file) and one param's worth to read it back into.
  static std::int64_t extra_bytes(const ParamStore& ps, ImportanceMetric metric, const std::vector<bool>& scored,
                                  bool spill_to_file) {
    if (metric != ImportanceMetric::loss_drop) return 0;
    std::int64_t total = 0, largest = 0;
    for (std::size_t k = 0; k < ps.size(); ++k)
      if (scored[k]) total += ps[k].size(), largest = std::max(largest, ps[k].size());
    return (spill_to_file ? largest : total + largest) * std::int64_t(sizeof(float));
  }

 private:
  // The loss-drop passes, the first one's forward already run at w0.
  void loss_drop(Graph& g, ParamStore& ps, Opt& opt, float lr, const std::vector<bool>& scored,
                 const std::filesystem::path& spill_dir, std::vector<double>& per_param) {
    std::size_t total = 0, largest = 0;
    for (std::size_t k = 0; k < ps.size(); ++k)
      if (scored[k]) total += std::size_t(ps[k].size()), largest = std::max(largest, std::size_t(ps[k].size()));
    spill_.open(spill_dir, total);
    moved_.clear();
    try {
      // The step training would take (the optimizer's state untouched): each node's weights
      // move to w1 once its backward has run, their w0 spilled first.
      g.backward([&](int i) {
        for (int k : g.node(i).param_ids()) {
          if (!scored[std::size_t(k)]) continue;
          Param& p = ps[std::size_t(k)];
          spill_.write(p.value, std::size_t(p.size()));
          moved_.push_back(k);
          opt.preview(ps, std::size_t(k), p.value, lr);
        }
      });
      restore_buffers(ps);  // the second pass sees the same batch-norm statistics
      // The gradient at w1 against dw0 = w1 - w0, node by node in the same order; w0 goes back.
      spill_.rewind();
      w0_.resize(largest);
      std::size_t at = 0;
      g.forward(true);
      g.backward([&](int i) {
        for (int k : g.node(i).param_ids()) {
          if (!scored[std::size_t(k)]) continue;
          if (at >= moved_.size() || moved_[at] != k)
            fail("importance probe: param '{}' came back out of order", ps[std::size_t(k)].name);
          Param& p = ps[std::size_t(k)];
          spill_.read(w0_.data(), std::size_t(p.size()));
          per_param[std::size_t(k)] = -dot(p.grad, p.value, w0_.data(), p.size());
          host::copy(p.value, w0_.data(), p.size());
          ++at;
        }
      });
    } catch (...) {
      // Every moved param goes back to w0 (those already restored get the same values again).
      spill_.rewind();
      for (int k : moved_) spill_.read(ps[std::size_t(k)].value, std::size_t(ps[std::size_t(k)].size()));
      release(opt);
      throw;
    }
    release(opt);
  }

  // The probe's memory goes back: the spill, the read-back buffer, the preview scratch.
  void release(Opt& opt) {
    spill_.close();
    std::vector<float>().swap(w0_);
    std::vector<int>().swap(moved_);
    opt.release_preview();
  }

  // sum g[i] * (w1[i] - w0[i]) in double (the difference in float), over 64 fixed chunks
  // summed in order: the same result on any thread count (reruns and resumed runs select
  // identically). Each chunk runs as host::vectorized does (the build's SSE2 code took
  // twice the share of a bf16 probe's time, after oneDNN's bf16 kernels; core/host_math.hpp,
  // for_chunks).
  static double dot(const float* g, const float* w1, const float* w0, std::int64_t n) {
    constexpr int kChunks = 64;
    std::array<double, kChunks> part{};
#pragma omp parallel for schedule(static) if (n > host::kParallelMin)
    for (int c = 0; c < kChunks; ++c) {
      const std::int64_t begin = n * c / kChunks, count = n * (c + 1) / kChunks - begin;
      host::vectorized([&]() ELASTIC_INLINE {
        part[std::size_t(c)] = (host::array(g + begin, count).cast<double>() *
                                (host::array(w1 + begin, count) - host::array(w0 + begin, count)).cast<double>())
                                   .sum();
      });
    }
    double s = 0;
    for (double p : part) s += p;
    return s;
  }

  static double abs_sum(std::span<const float> v) {
    double s = 0;
    host::vectorized(
        [&]() ELASTIC_INLINE { s = host::array(v.data(), std::int64_t(v.size())).abs().cast<double>().sum(); });
    return s;
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

  io::Spill spill_;                   // w0 of the moved params, in the order they moved
  std::vector<int> moved_;            // that order
  std::vector<float> w0_, buffers0_;  // one param's w0 read back; the batch-norm statistics
};

}  // namespace elastic
