// The selection problem of ElasticTrainer (docs/method.md, "The budget and the DP"): choose units m to
// maximize sum m[k] I[k] subject to
//   T_b(m) = sum_{k >= f} t_dy[k] + sum_k m[k] t_dw[k] <= budget,  f = min selected k,
// solved exactly for integer-quantized times in O(N * T): for every candidate
// earliest unit f (walking from the output side down), the best use of what the
// budget leaves after the t_dy stretch down to f is a 0/1 knapsack over the units
// above f, and one knapsack table grown from the output side answers every f.
// Times are rounded up when quantized, so a returned selection never exceeds
// the real budget. Pure function of its inputs: no graph, no timing.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "elastic/core/error.hpp"

namespace elastic {

struct Selection {
  std::vector<bool> mask;  // per unit, forward order
  double importance = 0;   // sum of the selected units' importance
  double cost = 0;         // T_b(mask) in the units of the inputs
  int earliest = -1;       // f, or -1 when nothing is selected
};

// Quantum: the integer type of quantized times (int32 covers any resolution a
// table of N * T bits can hold in memory).
template <class Quantum = std::int32_t>
class DPSelector {
 public:
  // @param resolution number of time units the full backward pass is divided into
  explicit DPSelector(Quantum resolution = 1000) : resolution_(resolution) {
    if (resolution < 1) usage_fail("DP time resolution must be at least 1, got {}", resolution);
  }

  Quantum resolution() const { return resolution_; }

  Selection select(std::span<const double> t_dw, std::span<const double> t_dy, std::span<const double> importance,
                   double budget) {
    const std::size_t n = t_dw.size();
    if (t_dy.size() != n || importance.size() != n)
      usage_fail("DP selection: t_dw, t_dy and importance must have one entry per unit ({}, {}, {})", t_dw.size(),
                 t_dy.size(), importance.size());
    for (std::size_t k = 0; k < n; ++k) {
      if (!(t_dw[k] >= 0) || !std::isfinite(t_dw[k]))
        usage_fail("DP selection: t_dw[{}] = {} is not a finite time >= 0", k, t_dw[k]);
      if (!(t_dy[k] >= 0) || !std::isfinite(t_dy[k]))
        usage_fail("DP selection: t_dy[{}] = {} is not a finite time >= 0", k, t_dy[k]);
      if (std::isnan(importance[k])) usage_fail("DP selection: importance[{}] is NaN", k);
    }
    if (std::isnan(budget)) usage_fail("DP selection: the budget is NaN");

    Selection out;
    out.mask.assign(n, false);
    if (n == 0 || budget < 0) return out;

    // Every unit worth training fits: no quantization needed (rounding up could
    // otherwise push the full selection just over a budget that holds it).
    for (std::size_t k = 0; k < n; ++k) out.mask[k] = importance[k] > 0;
    if (finish(out, t_dw, t_dy, importance) <= budget) return out;
    out = Selection{};
    out.mask.assign(n, false);

    // Quantize: the full backward pass is `resolution_` units; costs round up, the budget down.
    double total = 0;
    for (std::size_t k = 0; k < n; ++k) total += t_dw[k] + t_dy[k];
    const double scale = total > 0 ? double(resolution_) / total : 0.0;
    const auto up = [&](double t) { return static_cast<Quantum>(std::ceil(t * scale)); };
    const Quantum cap = static_cast<Quantum>(std::min<double>(std::floor(budget * scale), resolution_));
    cost_.resize(n);
    stretch_.resize(n + 1);
    double suffix = 0;
    stretch_[n] = 0;
    for (std::size_t k = n; k-- > 0;) {
      cost_[k] = up(t_dw[k]);
      suffix += t_dy[k];
      stretch_[k] = up(suffix);  // quantized t_dy from the loss down to k
    }

    // best_[b]: most importance from units above the current f with quantized t_dw total <= b.
    const std::size_t width = static_cast<std::size_t>(cap) + 1;
    best_.assign(width, 0.0);
    take_.assign(n * width, false);
    double best_value = 0;
    int best_f = -1;
    for (std::size_t f = n; f-- > 0;) {
      if (importance[f] > 0) {
        const Quantum need = stretch_[f] + cost_[f];
        if (need <= cap) {
          const double value = importance[f] + best_[static_cast<std::size_t>(cap - need)];
          if (value > best_value) {
            best_value = value;
            best_f = static_cast<int>(f);
          }
        }
        // Unit f joins the knapsack for every earlier f.
        const Quantum c = cost_[f];
        if (c <= cap) {
          for (std::size_t b = width; b-- > static_cast<std::size_t>(c);) {
            const double with = best_[b - static_cast<std::size_t>(c)] + importance[f];
            if (with > best_[b]) {
              best_[b] = with;
              take_[f * width + b] = true;
            }
          }
        }
      }
    }
    if (best_f < 0) return out;

    // Walk the knapsack back from f+1 (the last unit added before f was evaluated) to N-1.
    out.mask[static_cast<std::size_t>(best_f)] = true;
    auto left = static_cast<std::size_t>(cap - stretch_[static_cast<std::size_t>(best_f)] -
                                         cost_[static_cast<std::size_t>(best_f)]);
    for (std::size_t k = static_cast<std::size_t>(best_f) + 1; k < n; ++k) {
      if (take_[k * width + left]) {
        out.mask[k] = true;
        left -= static_cast<std::size_t>(cost_[k]);
      }
    }
    finish(out, t_dw, t_dy, importance);
    return out;
  }

  // Fills importance, cost and earliest of a mask; returns the cost.
  static double finish(Selection& s, std::span<const double> t_dw, std::span<const double> t_dy,
                       std::span<const double> importance) {
    s.importance = 0;
    s.cost = 0;
    s.earliest = -1;
    for (std::size_t k = 0; k < s.mask.size(); ++k)
      if (s.mask[k]) {
        s.earliest = static_cast<int>(k);
        break;
      }
    if (s.earliest < 0) return 0;
    for (std::size_t k = static_cast<std::size_t>(s.earliest); k < s.mask.size(); ++k) {
      s.cost += t_dy[k] + (s.mask[k] ? t_dw[k] : 0.0);
      if (s.mask[k]) s.importance += importance[k];
    }
    return s.cost;
  }

 private:
  Quantum resolution_;
  // Scratch reused across calls (re-selection happens every few epochs).
  std::vector<Quantum> cost_, stretch_;
  std::vector<double> best_;
  std::vector<bool> take_;  // take_[k * width + b]: unit k improved capacity b when it was added
};

}  // namespace elastic
