// TimingProfiler: measures, in place with the model's own kernels on dummy
// data, the time model of SPEC section 1: T_fwd, and per selection unit t_dw
// (its backward_weights kernel plus the optimizer update of its tensors) and
// t_dy (the backward_data of every node between it and the next unit up).
// Warm-up runs first, then the median of repeated runs, with the spread.
// A Profile is saved as JSON keyed by what it depends on (model, input size,
// classes, batch, threads, CPU); training refuses a profile of another key.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "elastic/core/timer.hpp"
#include "elastic/method/profile.hpp"
#include "elastic/method/units.hpp"
#include "elastic/models/model.hpp"

namespace elastic {

inline ProfileKey profile_key(const Model& m, int threads) {
  return {m.name, m.input_shape.at(2), m.num_classes, m.input_shape.at(0), threads, cpu_model_name()};
}

struct ProfileOptions {
  int warmup = 3;
  int repeats = 10;
};

// Profiles any graph-backed model; G is the graph type (the engine's Graph).
template <class G = Graph>
class TimingProfiler {
 public:
  explicit TimingProfiler(ProfileOptions o = {}) : o_(o) {
    if (o.repeats < 1 || o.warmup < 0) usage_fail("profiler: repeats must be >= 1 and warmup >= 0");
  }

  // Runs on whatever the model's input holds (dummy data is fine). Installs the
  // full plan while measuring and restores `restore_mask` (params) afterwards.
  Profile run(Model& m, int threads, const std::vector<bool>& restore_mask) {
    G& g = *m.graph;
    const auto units = selection_units(g);
    const std::size_t n_nodes = g.size(), n_units = units.size();
    g.select_all();
    std::vector<std::vector<double>> data(n_nodes), weights(n_nodes);
    std::vector<double> fwd;
    std::vector<float> scratch_w, scratch_v, scratch_g;  // stand-ins for one optimizer update
    // Each unit updates its own stretch of the scratch (wrapping around), so, as in
    // a real step, its update finds its tensors cold in cache, not left hot by the last one.
    std::int64_t largest = 0, total = 0;
    for (const auto& u : units) {
      largest = std::max(largest, u.elements);
      total += u.elements;
    }
    const std::int64_t span = std::max(largest, std::min<std::int64_t>(total, std::int64_t{8} << 20));
    scratch_w.assign(static_cast<std::size_t>(span), 0.5f);
    scratch_v.assign(static_cast<std::size_t>(span), 0.0f);
    scratch_g.assign(static_cast<std::size_t>(span), 0.1f);
    std::vector<std::vector<double>> update(n_units);
    const auto& plan = g.plan();
    for (int r = 0; r < o_.warmup + o_.repeats; ++r) {
      const bool record = r >= o_.warmup;
      Stopwatch sw;
      g.forward(true);
      if (record) fwd.push_back(sw.elapsed_ms());
      // In the graph's order: a node's backward_weights may reuse what its
      // backward_data computed (batch norm's gamma/beta sums), and then costs
      // only that. (A unit trained without the pass below it runs the full
      // backward_weights; with batch norm's sums that is a small underestimate.)
      for (std::size_t i = n_nodes; i-- > 0;) {
        const int node = static_cast<int>(i);
        if (plan.run_data[i]) {
          sw.reset();
          g.backward_data_node(node);
          g.context().wait();
          if (record) data[i].push_back(sw.elapsed_ms());
        }
        if (plan.run_weights[i]) {
          sw.reset();
          g.backward_weights_node(node);
          g.context().wait();
          if (record) weights[i].push_back(sw.elapsed_ms());
        }
      }
      std::int64_t at = 0;
      for (std::size_t u = 0; u < n_units; ++u) {
        if (at + units[u].elements > span) at = 0;
        const auto o = static_cast<std::size_t>(at);
        sw.reset();
        sgd_like_update(scratch_w.data() + o, scratch_v.data() + o, scratch_g.data() + o, units[u].elements);
        if (record) update[u].push_back(sw.elapsed_ms());
        at += units[u].elements;
      }
    }
    Profile p;
    p.key = profile_key(m, threads);
    const Summary f = summarize(fwd);
    p.t_fwd = f.median;
    p.t_fwd_spread = f.max - f.min;
    for (std::size_t u = 0; u < n_units; ++u) {
      p.units.push_back(units[u].name);
      const Summary w = summarize(weights[static_cast<std::size_t>(units[u].node)]);
      const Summary up = summarize(update[u]);
      p.t_dw.push_back(w.median + up.median);
      p.t_dw_spread.push_back(w.max - w.min + up.max - up.min);
      // t_dy: backward_data of the nodes above this unit's node, up to and including the next unit's node.
      const std::size_t from = static_cast<std::size_t>(units[u].node) + 1;
      const std::size_t to = u + 1 < n_units ? static_cast<std::size_t>(units[u + 1].node) : n_nodes - 1;
      double dy = 0, spread = 0;
      for (std::size_t i = from; i <= to; ++i) {
        if (data[i].empty()) continue;
        const Summary d = summarize(data[i]);
        dy += d.median;
        spread += d.max - d.min;
      }
      p.t_dy.push_back(dy);
      p.t_dy_spread.push_back(spread);
    }
    g.select(restore_mask);
    return p;
  }

 private:
  // The memory traffic of one SGDW update of `n` elements (what the trainer
  // pays per selected tensor besides its kernel).
  static void sgd_like_update(float* __restrict w, float* __restrict v, const float* __restrict g, std::int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 32768)
    for (std::int64_t i = 0; i < n; ++i) {
      v[i] = 0.9f * v[i] - 1e-4f * g[i];
      w[i] = w[i] - 1e-6f * w[i] + v[i];
    }
  }

  ProfileOptions o_;
};

}  // namespace elastic
