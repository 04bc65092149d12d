// TrainingMemory: the process's peak resident memory while training under a
// selection, and while the importance probe runs, predicted from what the
// engine knows (docs/method.md, "The memory budget"):
//   base            the process when the model was built, less its buffers (Model::base_bytes),
//                   and what the trainer measured beyond it (the kernels of a second thread count)
//   weights         params' and buffers' values, pinned inputs and outputs
//   weight copies   frozen params' kept copies (re-laid-out or bf16), while the graph keeps them
//   activations     the plan's arena: exact, from the memory planner, for any mask; and what
//                   nodes keep of their own (attention's probabilities)
//   gradients       the streamed gradient buffer: as large as the largest node it has held
//   optimizer       slots of every param trained so far or now (a param keeps its slots when it
//                   leaves the selection, so that training stays exact when it comes back)
//   scratch         the buffers all nodes share (oneDNN scratchpads, trained weights' copies)
//   data            the batch source's buffers (what it reports)
//   probe           the probe's copy of the weights it moves (unless spilled to a file), the
//                   optimizer's preview scratch
//   checkpoint      a checkpoint's copy of the optimizer's slots (runs that write checkpoints)
//   selector        the DP's tables while it solves (DPSelector::memory_table_bytes), between
//                   steps, with the activations given back (solving)
// Training's peak is the sum; the run's is the larger of training's and the probe's. The DP's
// additive form (fixed + stretch[f] + sum unit[k]) approximates it; the trainer checks every
// candidate against the exact figure before installing it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "elastic/method/importance_evaluator.hpp"
#include "elastic/method/units.hpp"
#include "elastic/models/model.hpp"

namespace elastic {

inline constexpr double kMiB = 1024.0 * 1024.0;

struct MemoryBreakdown {
  std::int64_t base = 0, weights = 0, weight_copies = 0, activations = 0, gradients = 0, optimizer = 0, scratch = 0,
               data = 0, probe = 0, checkpoint = 0, selector = 0;

  std::int64_t total() const {
    return base + weights + weight_copies + activations + gradients + optimizer + scratch + data + probe + checkpoint +
           selector;
  }
  // "total 812.3 MiB: base 61.0, weights 97.7, ..." (MiB).
  std::string describe() const {
    return fmt::format(
        "{:.1f} MiB: base {:.1f}, weights {:.1f}, weight copies {:.1f}, activations {:.1f}, gradients {:.1f}, "
        "optimizer {:.1f}, scratch {:.1f}, data {:.1f}, probe {:.1f}, checkpoint {:.1f}, selector {:.1f}",
        double(total()) / kMiB, double(base) / kMiB, double(weights) / kMiB, double(weight_copies) / kMiB,
        double(activations) / kMiB, double(gradients) / kMiB, double(optimizer) / kMiB, double(scratch) / kMiB,
        double(data) / kMiB, double(probe) / kMiB, double(checkpoint) / kMiB, double(selector) / kMiB);
  }
};

class TrainingMemory {
 public:
  // `data_bytes`: what the batch source holds; `slot_count`: the optimizer's slots per param;
  // `more_base`: memory the process holds beyond the model's base (measured by the caller).
  TrainingMemory(Model& m, std::size_t slot_count, std::int64_t data_bytes = 0, std::int64_t more_base = 0)
      : g_(*m.graph), units_(selection_units(*m.graph)), slot_count_(slot_count) {
    const ParamStore& ps = g_.params();
    fixed_.base = m.base_bytes + more_base;
    fixed_.weights = ps.value_bytes() + g_.pinned_bytes();
    fixed_.scratch = g_.transient_bytes();
    fixed_.data = data_bytes;
    for (const Unit& u : units_) {
      std::int64_t elements = 0;
      for (int k : u.params) elements += ps[std::size_t(k)].size();
      slots_.push_back(elements * std::int64_t(sizeof(float) * slot_count));
      copy_.push_back(static_cast<std::int64_t>(g_.node(u.node).frozen_copy_bytes()));
      stream_.push_back(ps.stream_bytes(u.node));
    }
  }

  const std::vector<Unit>& units() const { return units_; }
  // What the batch source holds (it may be known only once training starts).
  void set_data_bytes(std::int64_t bytes) { fixed_.data = bytes; }
  std::size_t size() const { return units_.size(); }
  // Per unit: its optimizer slots, its frozen copy, its streamed gradients (bytes).
  std::int64_t slot_bytes(std::size_t u) const { return slots_[u]; }
  std::int64_t copy_bytes(std::size_t u) const { return copy_[u]; }

  // Training steps under `train` (units), the optimizer holding slots for the units in
  // `has_slots` as well; `recent`: units the streamed gradient buffer has held since it was
  // last cleared (the trainer clears it every epoch); `keep_copies`: Graph::keep_weight_copies.
  MemoryBreakdown training(const std::vector<bool>& train, const std::vector<bool>& has_slots,
                           const std::vector<bool>& recent, bool keep_copies) const {
    check(train, "train");
    check(has_slots, "has_slots");
    check(recent, "recent");
    MemoryBreakdown b = fixed_;
    for (std::size_t u = 0; u < units_.size(); ++u) {
      if (keep_copies && !train[u]) b.weight_copies += copy_[u];
      if (train[u] || recent[u]) b.gradients = std::max(b.gradients, stream_[u]);
      if (train[u] || has_slots[u]) b.optimizer += slots_[u];
    }
    b.activations = g_.own_bytes() + arena(param_mask(units_, train, g_.params().size()));
    return b;
  }

  // Between steps while the DP solves, the graph's activations given back
  // (Graph::release_activations): the plan of `current` (units) holds its streamed gradients and
  // frozen copies, the optimizer the slots of `has_slots`, and the DP its tables
  // (`table_bytes`).
  MemoryBreakdown solving(const std::vector<bool>& current, const std::vector<bool>& has_slots,
                          const std::vector<bool>& recent, bool keep_copies, std::int64_t table_bytes) const {
    MemoryBreakdown b = training(current, has_slots, recent, keep_copies);
    b.optimizer = 0;  // slots are made at a param's first step: the plan in force may have none yet
    for (std::size_t u = 0; u < units_.size(); ++u)
      if (has_slots[u]) b.optimizer += slots_[u];
    b.activations = g_.own_bytes();
    b.selector = table_bytes;
    return b;
  }

  // The importance probe (ImportanceEvaluator) scoring the units in `scope` (empty: all): the
  // plan that trains them with streamed gradients, the optimizer's slots as they are, frozen
  // copies of the units outside the scope (when kept), and the probe's own memory (w0 of the
  // scored params unless spilled to a file, and the optimizer's preview scratch).
  MemoryBreakdown probe(const std::vector<bool>& has_slots, ImportanceMetric metric, const ProbeScope& scope = {},
                        bool keep_copies = true) const {
    check(has_slots, "has_slots");
    const std::vector<bool> scored = scope.units.empty() ? std::vector<bool>(units_.size(), true) : scope.units;
    check(scored, "the probe's scope");
    MemoryBreakdown b = fixed_;
    std::int64_t largest = 0;
    for (std::size_t u = 0; u < units_.size(); ++u) {
      if (has_slots[u]) b.optimizer += slots_[u];
      if (!scored[u]) {
        if (keep_copies) b.weight_copies += copy_[u];
        continue;
      }
      b.gradients = std::max(b.gradients, stream_[u]);
      for (int k : units_[u].params) largest = std::max(largest, g_.params()[std::size_t(k)].size());
    }
    const std::vector<bool> params = param_mask(units_, scored, g_.params().size());
    b.activations = g_.own_bytes() + arena(params);
    b.probe = ImportanceEvaluator<>::extra_bytes(g_.params(), metric, params, !scope.spill_dir.empty());
    if (metric == ImportanceMetric::loss_drop) b.probe += largest * std::int64_t(sizeof(float) * slot_count_);
    return b;
  }

  // The DP's additive model of training(train, has_slots, recent, keep_copies).total():
  // fixed + stretch[f] + sum over selected k of unit[k], f the earliest selected unit.
  //   stretch[f]: the arena of the plan that trains unit f alone (the backward pass down to f;
  //     units above f that are selected too may keep more activations: not additive);
  //   unit[k]: slots the unit does not have yet, less its frozen copy when copies are kept
  //     (clamped at 0: the model then overstates memory, never understates it);
  //   fixed: the rest, with every frozen copy kept and the streamed buffer of `recent`.
  struct Additive {
    double fixed = 0;
    std::vector<double> stretch, unit;
  };
  Additive additive(const std::vector<bool>& has_slots, const std::vector<bool>& recent, bool keep_copies) {
    check(has_slots, "has_slots");
    check(recent, "recent");
    Additive a;
    const std::vector<bool> none(units_.size(), false);
    a.fixed = double(training(none, has_slots, recent, keep_copies).total() -
                     g_.plan_arena_bytes(std::vector<bool>(g_.params().size(), false)));  // own_bytes stay
    a.stretch = stretch();
    for (std::size_t u = 0; u < units_.size(); ++u)
      a.unit.push_back(std::max(0.0, double(has_slots[u] ? 0 : slots_[u]) - (keep_copies ? double(copy_[u]) : 0.0)));
    return a;
  }

  // stretch[f] of additive(): computed once (one memory plan per unit).
  const std::vector<double>& stretch() {
    if (stretch_.empty())
      for (std::size_t f = 0; f < units_.size(); ++f) {
        std::vector<bool> one(units_.size(), false);
        one[f] = true;
        stretch_.push_back(double(g_.plan_arena_bytes(param_mask(units_, one, g_.params().size()))));
      }
    return stretch_;
  }

 private:
  // The planner's arena for a param mask, each mask planned once (up to 4096 remembered, so
  // that a long run's candidates do not grow the process).
  std::int64_t arena(const std::vector<bool>& params) const {
    const auto it = arenas_.find(params);
    if (it != arenas_.end()) return it->second;
    if (arenas_.size() >= 4096) arenas_.clear();
    return arenas_[params] = g_.plan_arena_bytes(params);
  }

  void check(const std::vector<bool>& mask, const char* what) const {
    if (mask.size() != units_.size())
      fail("training memory: {} has {} entries for {} units", what, mask.size(), size());
  }

  Graph& g_;
  std::vector<Unit> units_;
  std::size_t slot_count_;
  MemoryBreakdown fixed_;                            // base, weights, scratch and data
  std::vector<std::int64_t> slots_, copy_, stream_;  // per unit
  std::vector<double> stretch_;
  mutable std::map<std::vector<bool>, std::int64_t> arenas_;
};

}  // namespace elastic
