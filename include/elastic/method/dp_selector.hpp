// The selection problem of ElasticTrainer (docs/method.md, "The budget and the DP"): choose units m to
// maximize sum m[k] I[k] subject to
//   T_b(m) = sum_{k >= f} t_dy[k] + sum_k m[k] t_dw[k] <= budget,  f = min selected k,
// solved exactly for integer-quantized times in O(N * T): for every candidate earliest unit f
// (walking from the output side down), the best use of what the budget leaves after the t_dy
// stretch down to f is a 0/1 knapsack over the units above f, and one knapsack table grown
// from the output side answers every f. The table keeps one row of values and one bit per
// (unit, capacity) for the walk back; the inner loop runs 4 or 8 capacities per instruction.
// Times are rounded up when quantized, so a returned selection never exceeds
// the real budget. Pure function of its inputs: no graph, no timing.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ELASTIC_DP_X86 1
#endif

#include "elastic/core/error.hpp"

namespace elastic {

// The inner loop that adds a unit to the knapsack: the widest the CPU has (best), or a named
// one (the tests run each against the portable loop; every kernel gives the same selection).
enum class DPKernel { best, portable, avx2, avx512 };

namespace detail {

using KnapsackAdd = void (*)(double* best, const double* from, std::uint64_t* take, std::size_t c, std::size_t end,
                             double v);

// best[b] = max(best[b], from[b - c] + v) for c <= b < end, setting bit b of `take` where the
// unit improves best[b]. `from` is best itself (one table row) or another row. Downwards, so
// when it is best itself each from[b - c] read is still the value before this unit.
inline void knapsack_add_portable(double* best, const double* from, std::uint64_t* take, std::size_t c, std::size_t end,
                                  double v) {
  for (std::size_t b = end; b-- > c;) {
    const double with = from[b - c] + v;
    if (with > best[b]) {
      best[b] = with;
      take[b / 64] |= std::uint64_t{1} << (b % 64);
    }
  }
}

#ifdef ELASTIC_DP_X86
// ORs the `lanes` bits of m into take at bit b (they may cross into the next word).
inline void or_bits(std::uint64_t* take, std::size_t b, std::uint64_t m, std::size_t lanes) {
  take[b / 64] |= m << (b % 64);
  if (b % 64 + lanes > 64) take[b / 64 + 1] |= m >> (64 - b % 64);
}

// The same loop, 4 (AVX2) or 8 (AVX-512) capacities per instruction. Blocks go downwards too:
// a block reads from[b - c, b - c + lanes) before it stores best[b, b + lanes), and earlier
// blocks stored only above b + lanes, so no read sees this unit's writes.
__attribute__((target("avx2"))) inline void knapsack_add_avx2(double* best, const double* from, std::uint64_t* take,
                                                              std::size_t c, std::size_t end, double v) {
  const __m256d add = _mm256_set1_pd(v);
  std::size_t b = end;
  for (; b - c >= 4;) {
    b -= 4;
    const __m256d with = _mm256_add_pd(_mm256_loadu_pd(from + b - c), add);
    const __m256d now = _mm256_loadu_pd(best + b);
    const auto m = static_cast<std::uint64_t>(_mm256_movemask_pd(_mm256_cmp_pd(with, now, _CMP_GT_OQ)));
    if (m) {
      _mm256_storeu_pd(best + b, _mm256_max_pd(with, now));
      or_bits(take, b, m, 4);
    }
  }
  knapsack_add_portable(best, from, take, c, b, v);
}

__attribute__((target("avx512f"))) inline void knapsack_add_avx512(double* best, const double* from,
                                                                   std::uint64_t* take, std::size_t c, std::size_t end,
                                                                   double v) {
  const __m512d add = _mm512_set1_pd(v);
  std::size_t b = end;
  for (; b - c >= 8;) {
    b -= 8;
    const __m512d with = _mm512_add_pd(_mm512_loadu_pd(from + b - c), add);
    const __m512d now = _mm512_loadu_pd(best + b);
    const __mmask8 gt = _mm512_cmp_pd_mask(with, now, _CMP_GT_OQ);
    if (gt) {
      _mm512_storeu_pd(best + b, _mm512_mask_blend_pd(gt, now, with));
      or_bits(take, b, gt, 8);
    }
  }
  knapsack_add_portable(best, from, take, c, b, v);
}
#endif

struct KnapsackKernel {
  KnapsackAdd add;
  const char* name;
};

inline KnapsackKernel knapsack_add_kernel(DPKernel kernel) {
#ifdef ELASTIC_DP_X86
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2");
  if (kernel == DPKernel::best) kernel = avx512 ? DPKernel::avx512 : avx2 ? DPKernel::avx2 : DPKernel::portable;
  if (kernel == DPKernel::avx512) {
    if (!avx512) usage_fail("DP kernel avx512: this CPU has no AVX-512F");
    return {&knapsack_add_avx512, "avx512"};
  }
  if (kernel == DPKernel::avx2) {
    if (!avx2) usage_fail("DP kernel avx2: this CPU has no AVX2");
    return {&knapsack_add_avx2, "avx2"};
  }
#else
  if (kernel == DPKernel::avx2 || kernel == DPKernel::avx512) usage_fail("DP kernels avx2 and avx512 are x86-64 only");
#endif
  return {&knapsack_add_portable, "portable"};
}

}  // namespace detail

struct Selection {
  std::vector<bool> mask;  // per unit, forward order
  double importance = 0;   // sum of the selected units' importance
  double cost = 0;         // T_b(mask) in the units of the inputs
  int earliest = -1;       // f, or -1 when nothing is selected
  double memory = 0;       // the modelled memory of the mask (select with a MemoryModel only)
};

// Memory of a selection as the DP models it, in any unit (bytes, MiB): the earliest selected
// unit f fixes stretch[f] (what the backward pass down to f keeps), each selected unit k adds
// unit[k]; a mask's memory, stretch[f] + sum m[k] unit[k], must stay within budget. Quantized
// to `resolution` steps of the budget, rounded up, so a returned selection never exceeds it
// (rounding costs at most one step per selected unit: with N units and 1000 steps, at most
// (N + 1) / 1000 of the budget).
struct MemoryModel {
  std::span<const double> stretch, unit;
  double budget = 0;
  std::int32_t resolution = 1000;
};

// Quantum: the integer type of quantized times (int32 covers any resolution a
// table of N * T bits can hold in memory).
template <class Quantum = std::int32_t>
class DPSelector {
 public:
  // @param resolution number of time units the full backward pass is divided into
  explicit DPSelector(Quantum resolution = 1000, DPKernel kernel = DPKernel::best)
      : resolution_(resolution), kernel_(detail::knapsack_add_kernel(kernel)) {
    if (resolution < 1) usage_fail("DP time resolution must be at least 1, got {}", resolution);
  }

  Quantum resolution() const { return resolution_; }
  // The inner loop in use: "portable", "avx2" or "avx512".
  const char* kernel() const { return kernel_.name; }

  // Most importance within the time budget.
  Selection select(std::span<const double> t_dw, std::span<const double> t_dy, std::span<const double> importance,
                   double budget) {
    check(t_dw, t_dy, importance, budget);
    const std::size_t n = t_dw.size();
    Selection out;
    out.mask.assign(n, false);
    if (n == 0 || budget < 0) return out;
    if (all_useful(out, t_dw, t_dy, importance, budget, nullptr)) return out;
    const Quantum cap = quantize_time(t_dw, t_dy, budget);

    // best_[b]: most importance from units above the current f with quantized t_dw total <= b,
    // kept only up to `reach` (the added units' total cost): beyond it every capacity holds all
    // of them, so best_[b] = best_[reach] there. take_ row f, bit b: unit f improved capacity b
    // when it was added; reach_[f]: the reach after it was added.
    const std::size_t width = static_cast<std::size_t>(cap) + 1;
    const std::size_t words = (width + 63) / 64;
    best_.assign(width, 0.0);
    take_.assign(n * words, 0);
    reach_.resize(n);
    std::size_t reach = 0;
    double best_value = 0;
    int best_f = -1;
    for (std::size_t f = n; f-- > 0;) {
      if (importance[f] > 0) {
        const Quantum need = stretch_[f] + cost_[f];
        if (need <= cap) {
          const double value = importance[f] + best_[std::min(static_cast<std::size_t>(cap - need), reach)];
          if (value > best_value) {
            best_value = value;
            best_f = static_cast<int>(f);
          }
        }
        // Unit f joins the knapsack for every earlier f.
        const auto c = static_cast<std::size_t>(cost_[f]);
        if (c < width) {
          const std::size_t end = std::min(width, reach + c + 1);
          std::fill(best_.begin() + static_cast<std::ptrdiff_t>(reach) + 1,
                    best_.begin() + static_cast<std::ptrdiff_t>(end), best_[reach]);
          kernel_.add(best_.data(), best_.data(), take_.data() + f * words, c, end, importance[f]);
          reach = end - 1;
        }
      }
      reach_[f] = reach;
    }
    if (best_f < 0) return out;

    // Walk the knapsack back from f+1 (the last unit added before f was evaluated) to N-1.
    const auto first = static_cast<std::size_t>(best_f);
    out.mask[first] = true;
    auto left = static_cast<std::size_t>(cap - stretch_[first] - cost_[first]);
    for (std::size_t k = first + 1; k < n; ++k) {
      left = std::min(left, reach_[k]);
      if ((take_[k * words + left / 64] >> (left % 64)) & 1) {
        out.mask[k] = true;
        left -= static_cast<std::size_t>(cost_[k]);
      }
    }
    finish(out, t_dw, t_dy, importance);
    return out;
  }

  // Most importance within the time budget and the memory budget: the same DP with memory as
  // a second knapsack dimension (a table of time x memory capacities per step, one bit per unit
  // and cell for the walk back), exact for both quantized problems. O(N * T * M) time.
  Selection select(std::span<const double> t_dw, std::span<const double> t_dy, std::span<const double> importance,
                   double budget, const MemoryModel& memory) {
    check(t_dw, t_dy, importance, budget);
    const std::size_t n = t_dw.size();
    if (memory.stretch.size() != n || memory.unit.size() != n)
      usage_fail("DP selection: the memory model needs one stretch and one unit entry per unit ({}, {}, {})", n,
                 memory.stretch.size(), memory.unit.size());
    for (std::size_t k = 0; k < n; ++k) {
      if (!(memory.stretch[k] >= 0) || !std::isfinite(memory.stretch[k]))
        usage_fail("DP selection: memory stretch[{}] = {} is not a finite size >= 0", k, memory.stretch[k]);
      if (!(memory.unit[k] >= 0) || !std::isfinite(memory.unit[k]))
        usage_fail("DP selection: memory unit[{}] = {} is not a finite size >= 0", k, memory.unit[k]);
    }
    if (std::isnan(memory.budget)) usage_fail("DP selection: the memory budget is NaN");
    if (memory.resolution < 1) usage_fail("DP memory resolution must be at least 1, got {}", memory.resolution);
    Selection out;
    out.mask.assign(n, false);
    if (n == 0 || budget < 0 || memory.budget < 0) return out;
    if (all_useful(out, t_dw, t_dy, importance, budget, &memory)) return out;
    const Quantum cap = quantize_time(t_dw, t_dy, budget);

    // Memory: `resolution` units make the budget; sizes round up (a zero budget admits only
    // units of zero size).
    const double mscale = memory.budget > 0 ? memory.resolution / memory.budget : 0.0;
    const auto mcap = static_cast<std::size_t>(memory.budget > 0 ? memory.resolution : 0);
    const auto mup = [&](double x) -> std::size_t {  // sizes beyond the budget all become mcap + 1
      if (x <= 0) return 0;
      return memory.budget > 0 ? static_cast<std::size_t>(std::min(std::ceil(x * mscale), double(mcap + 1))) : mcap + 1;
    };
    mcost_.resize(n);
    mstretch_.resize(n);
    for (std::size_t k = 0; k < n; ++k) {
      mcost_[k] = mup(memory.unit[k]);
      mstretch_[k] = mup(memory.stretch[k]);
    }

    // best_[m * width + b]: most importance from units above f within time b and memory m;
    // take_ bit ((f * mwidth + m) * words * 64 + b): unit f improved cell (m, b). Both are given
    // back when the solve returns (memory_table_bytes).
    const std::size_t width = static_cast<std::size_t>(cap) + 1, words = (width + 63) / 64, mwidth = mcap + 1;
    const double table_mib = double(table_bytes(n, cap, mcap)) / 1048576;
    if (table_mib > 1024)
      usage_fail(
          "DP selection: the time x memory table would take {:.0f} MiB (N = {}, time resolution {}, memory "
          "resolution {}); lower a resolution",
          table_mib, n, resolution_, memory.resolution);
    const struct GiveBack {
      DPSelector& dp;
      ~GiveBack() {
        std::vector<double>().swap(dp.best_);
        std::vector<std::uint64_t>().swap(dp.take_);
      }
    } give_back{*this};
    best_.assign(mwidth * width, 0.0);
    take_.assign(n * mwidth * words, 0);
    double best_value = 0;
    int best_f = -1;
    for (std::size_t f = n; f-- > 0;) {
      if (!(importance[f] > 0)) continue;
      const Quantum need = stretch_[f] + cost_[f];
      const std::size_t mneed = mstretch_[f] + mcost_[f];
      if (need <= cap && mneed <= mcap) {
        const double value = importance[f] + best_[(mcap - mneed) * width + static_cast<std::size_t>(cap - need)];
        if (value > best_value) {
          best_value = value;
          best_f = static_cast<int>(f);
        }
      }
      const auto c = static_cast<std::size_t>(cost_[f]);
      const std::size_t mc = mcost_[f];
      if (c >= width || mc >= mwidth) continue;
      // Rows downwards: row m reads row m - mc, not yet updated for this unit (or, for mc = 0,
      // itself, which the kernel reads before it writes).
      for (std::size_t m = mcap + 1; m-- > mc;)
        kernel_.add(best_.data() + m * width, best_.data() + (m - mc) * width, take_.data() + (f * mwidth + m) * words,
                    c, width, importance[f]);
    }
    if (best_f < 0) return out;

    const auto first = static_cast<std::size_t>(best_f);
    out.mask[first] = true;
    auto left = static_cast<std::size_t>(cap - stretch_[first] - cost_[first]);
    std::size_t mleft = mcap - mstretch_[first] - mcost_[first];
    for (std::size_t k = first + 1; k < n; ++k) {
      if ((take_[(k * mwidth + mleft) * words + left / 64] >> (left % 64)) & 1) {
        out.mask[k] = true;
        left -= static_cast<std::size_t>(cost_[k]);
        mleft -= mcost_[k];
      }
    }
    finish(out, t_dw, t_dy, importance);
    out.memory = memory_of(out, memory);
    return out;
  }

  // Bytes of the tables the memory-aware select allocates for these times and this time budget
  // at memory resolution `memory_resolution`: (memory_resolution + 1) rows of the time
  // capacities within the budget, a double and N bits per cell. They are taken for the solve and
  // given back when it returns; a caller under a memory budget counts them while it solves.
  std::int64_t memory_table_bytes(std::span<const double> t_dw, std::span<const double> t_dy, double budget,
                                  std::int32_t memory_resolution) const {
    const Quantum cap = time_capacity(t_dw, t_dy, budget);
    return cap < 0 ? 0 : table_bytes(t_dw.size(), cap, static_cast<std::size_t>(std::max(0, memory_resolution)));
  }

  // Bytes the selector keeps between solves (its scratch's capacity): O(N) after a memory-aware
  // solve, whose tables are given back.
  std::int64_t retained_bytes() const {
    const auto bytes = [](const auto& v) { return std::int64_t(v.capacity() * sizeof(v[0])); };
    return bytes(cost_) + bytes(stretch_) + bytes(mcost_) + bytes(mstretch_) + bytes(best_) + bytes(take_) +
           bytes(reach_);
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

  // The modelled memory of a finished selection: stretch[f] + sum m[k] unit[k] (0 when empty).
  static double memory_of(const Selection& s, const MemoryModel& memory) {
    if (s.earliest < 0) return 0;
    double bytes = memory.stretch[static_cast<std::size_t>(s.earliest)];
    for (std::size_t k = 0; k < s.mask.size(); ++k)
      if (s.mask[k]) bytes += memory.unit[k];
    return bytes;
  }

 private:
  static void check(std::span<const double> t_dw, std::span<const double> t_dy, std::span<const double> importance,
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
  }

  // Every unit worth training fits: no quantization needed (rounding up could otherwise push the
  // full selection just over a budget that holds it). Leaves `out` selecting them and returns
  // true, or leaves it empty.
  static bool all_useful(Selection& out, std::span<const double> t_dw, std::span<const double> t_dy,
                         std::span<const double> importance, double budget, const MemoryModel* memory) {
    for (std::size_t k = 0; k < out.mask.size(); ++k) out.mask[k] = importance[k] > 0;
    const double cost = finish(out, t_dw, t_dy, importance);
    if (memory) out.memory = memory_of(out, *memory);
    if (cost <= budget && (!memory || out.memory <= memory->budget)) return true;
    const std::size_t n = out.mask.size();
    out = Selection{};
    out.mask.assign(n, false);
    return false;
  }

  // The memory-aware tables for `n` units, time capacity `cap` and memory capacity `mcap` (bytes).
  static std::int64_t table_bytes(std::size_t n, Quantum cap, std::size_t mcap) {
    const auto width = static_cast<std::int64_t>(cap) + 1, words = (width + 63) / 64,
               mwidth = static_cast<std::int64_t>(mcap) + 1;
    return std::int64_t(n) * mwidth * words * 8 + mwidth * width * 8;
  }

  // Quanta per unit of time: the full backward pass is `resolution_` of them.
  double time_scale(std::span<const double> t_dw, std::span<const double> t_dy) const {
    double total = 0;
    for (std::size_t k = 0; k < t_dw.size(); ++k) total += t_dw[k] + t_dy[k];
    return total > 0 ? double(resolution_) / total : 0.0;
  }
  // The quantized budget (rounded down, at most the resolution).
  Quantum time_capacity(std::span<const double> t_dw, std::span<const double> t_dy, double budget) const {
    return static_cast<Quantum>(std::min<double>(std::floor(budget * time_scale(t_dw, t_dy)), resolution_));
  }

  // Quantizes times: the full backward pass is `resolution_` units; costs (cost_, and stretch_[f],
  // the t_dy from the loss down to f) round up, the budget down. Returns the quantized budget.
  Quantum quantize_time(std::span<const double> t_dw, std::span<const double> t_dy, double budget) {
    const std::size_t n = t_dw.size();
    const double scale = time_scale(t_dw, t_dy);
    const auto up = [&](double t) { return static_cast<Quantum>(std::ceil(t * scale)); };
    cost_.resize(n);
    stretch_.resize(n + 1);
    double suffix = 0;
    stretch_[n] = 0;
    for (std::size_t k = n; k-- > 0;) {
      cost_[k] = up(t_dw[k]);
      suffix += t_dy[k];
      stretch_[k] = up(suffix);
    }
    return time_capacity(t_dw, t_dy, budget);
  }

  Quantum resolution_;
  detail::KnapsackKernel kernel_;
  // Scratch reused across calls (re-selection happens every few epochs).
  std::vector<Quantum> cost_, stretch_;
  std::vector<std::size_t> mcost_, mstretch_;
  std::vector<double> best_;
  std::vector<std::uint64_t> take_;  // one bit per (unit, capacity), rows of whole words
  std::vector<std::size_t> reach_;
};

}  // namespace elastic
