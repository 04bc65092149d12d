// TimingProfiler: measures, in place with the model's own kernels on whatever
// batch the model holds, the time model of the step the Trainer runs
// (profile.hpp, docs/method.md): frozen convolutions reusing their re-laid-out
// weights, gradients streamed, each node's params updated right after their
// gradients with the run's optimizer. Per node it times the forward with every
// unit frozen and with every unit trained (the difference is a unit's t_fw),
// backward_data and backward_weights in the graph's order, and per unit the
// optimizer's update on scratch buffers of the unit's size. Warm-up runs
// first, then the median of repeated runs, with the spread. Training refuses
// a profile of another key (model, sizes, threads, CPU, optimizer).
#pragma once

#include <array>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "elastic/core/timer.hpp"
#include "elastic/method/profile.hpp"
#include "elastic/method/units.hpp"
#include "elastic/models/model.hpp"
#include "elastic/optim/optimizer.hpp"

namespace elastic {

inline ProfileKey profile_key(const Model& m, int threads, const Optimizer& opt) {
  return {m.name,  m.input_shape.at(2), m.num_classes,           m.input_shape.at(0),
          threads, cpu_model_name(),    std::string(opt.name()), std::string(to_string(m.graph->precision()))};
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

  // Runs on whatever the model's input holds (dummy data is fine), pricing
  // updates with `opt` (only its arithmetic runs, on scratch buffers: the
  // model's params and `opt`'s state are untouched). Restores `restore_mask`
  // (params) afterwards, with kept gradients and no weight reuse.
  Profile run(Model& m, int threads, const std::vector<bool>& restore_mask, const Optimizer& opt = SGDW()) {
    G& g = *m.graph;
    const auto units = selection_units(g);
    const std::size_t n_nodes = g.size(), n_units = units.size();
    // Scratch for the updates: each unit updates its own stretch (wrapping
    // around), so, as in a real step, it finds its tensors cold in cache.
    std::int64_t largest = 0, total = 0;
    for (const auto& u : units) {
      largest = std::max(largest, u.elements);
      total += u.elements;
    }
    const std::int64_t span = std::max(largest, std::min<std::int64_t>(total, std::int64_t{8} << 20));
    std::vector<float> scratch_w(static_cast<std::size_t>(span), 0.5f), scratch_g(scratch_w.size(), 0.1f);
    std::vector<std::vector<float>> scratch_slots(opt.slot_count(), std::vector<float>(scratch_w.size(), 0.0f));

    std::vector<std::vector<double>> fwd_frozen(n_nodes), fwd_unfolded(n_nodes), fwd_full(n_nodes), data(n_nodes),
        weights(n_nodes), update(n_units);
    {
      const Graph::TrainingSteps settings(g);  // as in the trainer's steps
      const auto time_forward = [&](std::vector<std::vector<double>>& out, bool record) {
        for (std::size_t i = 0; i < n_nodes; ++i) {
          Stopwatch sw;
          g.forward_node(static_cast<int>(i), true);
          g.context().wait();
          if (record) out[i].push_back(sw.elapsed_ms());
        }
      };
      g.select_none();
      for (int r = 0; r < o_.warmup + o_.repeats; ++r) time_forward(fwd_frozen, r >= o_.warmup);
      // The same with the folded norms unfolded, as the nodes at and above the
      // earliest selected unit run.
      if (g.folding() && !g.folds().empty()) {
        g.fold_maps(false);
        for (int r = 0; r < o_.warmup + o_.repeats; ++r) time_forward(fwd_unfolded, r >= o_.warmup);
        g.fold_maps(true);
      } else {
        fwd_unfolded = fwd_frozen;
      }
      g.select_all();
      const auto& plan = g.plan();
      for (int r = 0; r < o_.warmup + o_.repeats; ++r) {
        const bool record = r >= o_.warmup;
        time_forward(fwd_full, record);
        // In the graph's order, each unit's update right after its gradients, as
        // the trainer's backward runs them. A node's backward_weights may reuse
        // what its backward_data computed (batch norm's gamma/beta sums), and then
        // costs only that. (A unit trained without the pass below it runs the
        // full backward_weights; with batch norm's sums that is a small underestimate.)
        std::int64_t at = 0;
        std::size_t u = n_units;
        for (std::size_t i = n_nodes; i-- > 0;) {
          const int node = static_cast<int>(i);
          Stopwatch sw;
          if (plan.run_data[i]) {
            g.backward_data_node(node);
            g.context().wait();
            if (record) data[i].push_back(sw.elapsed_ms());
          }
          if (!plan.run_weights[i]) continue;
          sw.reset();
          g.backward_weights_node(node);
          g.context().wait();
          if (record) weights[i].push_back(sw.elapsed_ms());
          while (u > 0 && static_cast<std::size_t>(units[u - 1].node) > i) --u;
          if (u == 0 || static_cast<std::size_t>(units[u - 1].node) != i) continue;
          const std::int64_t n = units[u - 1].elements;
          if (at + n > span) at = 0;
          std::array<float*, 4> slots{};
          for (std::size_t s = 0; s < scratch_slots.size(); ++s) slots[s] = scratch_slots[s].data() + at;
          sw.reset();
          opt.apply(scratch_w.data() + at, scratch_g.data() + at,
                    std::span<float* const>(slots.data(), scratch_slots.size()), n, 1e-4f, r + 1);
          if (record) update[u - 1].push_back(sw.elapsed_ms());
          at += n;
        }
      }
    }
    g.select(restore_mask);

    Profile p;
    p.key = profile_key(m, threads, opt);
    double frozen_total = 0, full_spread = 0;
    for (std::size_t i = 0; i < n_nodes; ++i) {
      frozen_total += summarize(fwd_frozen[i]).median;
      const Summary f = summarize(fwd_full[i]);
      full_spread += f.max - f.min;
    }
    p.t_fwd_frozen = frozen_total;
    p.t_fwd_spread = full_spread;
    double added = 0;
    for (std::size_t u = 0; u < n_units; ++u) {
      const auto node = static_cast<std::size_t>(units[u].node);
      p.units.push_back(units[u].name);
      p.t_fw.push_back(std::max(0.0, summarize(fwd_full[node]).median - summarize(fwd_unfolded[node]).median));
      added += p.t_fw.back();
      const Summary w = summarize(weights[node]);
      const Summary up = summarize(update[u]);
      p.t_dw.push_back(w.median + up.median);
      p.t_dw_spread.push_back(w.max - w.min + up.max - up.min);
      // t_dy: backward_data of the nodes above this unit's node, up to and including the next unit's node.
      const std::size_t from = node + 1;
      const std::size_t to = u + 1 < n_units ? static_cast<std::size_t>(units[u + 1].node) : n_nodes - 1;
      // With it, the forward time those nodes add when their backward runs: unfolded
      // (0 without folds), and for nodes that save something for backward (GELU's
      // derivative; never a unit's node), writing it.
      const auto& topo = g.topology();
      double dy = 0, spread = 0, unfold = 0;
      for (std::size_t i = from; i <= to; ++i) {
        unfold += summarize(fwd_unfolded[i]).median - summarize(fwd_frozen[i]).median;
        if (topo.nodes[i].saved_bytes > 0) unfold += summarize(fwd_full[i]).median - summarize(fwd_unfolded[i]).median;
        if (data[i].empty()) continue;
        const Summary d = summarize(data[i]);
        dy += d.median;
        spread += d.max - d.min;
      }
      p.t_dy.push_back(dy + std::max(0.0, unfold));
      p.t_dy_spread.push_back(spread);
    }
    p.t_fwd = p.t_fwd_frozen + added;
    return p;
  }

 private:
  ProfileOptions o_;
};

}  // namespace elastic
