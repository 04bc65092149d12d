// The gradients of a normalization's per-feature scale and shift: two sums over
// rows of a (rows, C) row-major gradient, d gamma[c] = sum dy * xhat and
// d beta[c] = sum dy. Each thread sums blocks of kBlock rows in float (full
// SIMD width), folds every block into double totals, and the threads' totals
// are combined in double: float error grows only over one block.
// Shared by BatchNorm2d (features = channels) and LayerNorm (features = last dim).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "elastic/core/host_math.hpp"

namespace elastic::detail {

class AffineGrads {
 public:
  static constexpr std::int64_t kBlock = 32;

  // Sizes the per-thread scratch once (setup), for at most the current OpenMP thread count.
  void reserve(std::int64_t features) {
    c_ = features;
    threads_ = omp_get_max_threads();
    partial_.assign(static_cast<std::size_t>(2 * c_ * threads_), 0.0);
    block_.assign(static_cast<std::size_t>(2 * c_ * threads_), 0.0f);
  }
  int threads() const { return threads_; }

  // xhat(r, c) gives the normalized input of row r, feature c (as float); dy
  // holds float or bf16 values (summed as float).
  template <class T, class Xhat>
  void run(std::int64_t rows, const T* dy, Xhat xhat, float* dgamma, float* dbeta) {
    const std::int64_t C = c_;
    run_with(
        rows, [=](std::int64_t r, std::int64_t c) ELASTIC_INLINE { return host::to_float(dy[r * C + c]); }, xhat,
        [](std::int64_t, std::int64_t, float) ELASTIC_INLINE {}, dgamma, dbeta);
  }

  // The same sums of g(r, c) (as float), each of which is also handed to
  // emit(r, c, g) (a backward pass writing its input's gradient in the same
  // sweep). Lambdas passed here should be ELASTIC_INLINE (host::vectorized).
  template <class G, class Xhat, class Emit>
  void run_with(std::int64_t rows, G grad, Xhat xhat, Emit emit, float* dgamma, float* dbeta) {
    const std::int64_t C = c_;
    double* partial = partial_.data();
    float* block = block_.data();
    std::fill(partial_.begin(), partial_.end(), 0.0);
    host::parallel_rows(rows, threads_, [&](std::int64_t begin, std::int64_t end, int t) ELASTIC_INLINE {
      double* acc = partial + 2 * C * t;  // [C] sum g * xhat, [C] sum g
      float* __restrict sg = block + 2 * C * t;
      float* __restrict sb = sg + C;
      for (std::int64_t r0 = begin; r0 < end; r0 += kBlock) {
        std::fill(sg, sg + 2 * C, 0.0f);
        const std::int64_t r1 = std::min(end, r0 + kBlock);
        std::int64_t r = r0;
        // Four rows per pass over the channels: the running sums go through memory once
        // per four rows. (Once per row ran 2x slower at 96 and 128 channels; two rows
        // per pass fell between; measured in benchmarks/RESULTS.md.)
        for (; r + 4 <= r1; r += 4) {
#pragma omp simd
          for (std::int64_t c = 0; c < C; ++c) {
            const float g0 = grad(r, c), g1 = grad(r + 1, c), g2 = grad(r + 2, c), g3 = grad(r + 3, c);
            emit(r, c, g0);
            emit(r + 1, c, g1);
            emit(r + 2, c, g2);
            emit(r + 3, c, g3);
            sg[c] += (g0 * xhat(r, c) + g1 * xhat(r + 1, c)) + (g2 * xhat(r + 2, c) + g3 * xhat(r + 3, c));
            sb[c] += (g0 + g1) + (g2 + g3);
          }
        }
        for (; r < r1; ++r) {
#pragma omp simd
          for (std::int64_t c = 0; c < C; ++c) {
            const float g = grad(r, c);
            emit(r, c, g);
            sg[c] += g * xhat(r, c);
            sb[c] += g;
          }
        }
        for (std::int64_t c = 0; c < 2 * C; ++c) acc[c] += double(sg[c]);
      }
    });
    for (std::int64_t c = 0; c < C; ++c) {
      double g = 0, b = 0;
      for (int t = 0; t < threads_; ++t) {
        g += partial[2 * C * t + c];
        b += partial[2 * C * t + C + c];
      }
      dgamma[c] = static_cast<float>(g);
      dbeta[c] = static_cast<float>(b);
    }
  }

 private:
  std::int64_t c_ = 0;
  int threads_ = 1;
  std::vector<double> partial_;  // (threads, 2, C) totals
  std::vector<float> block_;     // (threads, 2, C) sums of the current block
};

}  // namespace elastic::detail
