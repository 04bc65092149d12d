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

  // xhat(r, c) gives the normalized input of row r, feature c (as float); dy
  // holds float or bf16 values (summed as float).
  template <class T, class Xhat>
  void run(std::int64_t rows, const T* dy, Xhat xhat, float* dgamma, float* dbeta) {
    const std::int64_t C = c_;
    double* partial = partial_.data();
    float* block = block_.data();
    int used = 1;
#pragma omp parallel num_threads(threads_)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
#pragma omp single
      used = nt;
      double* acc = partial + 2 * C * t;  // [C] sum dy * xhat, [C] sum dy
      float* __restrict sg = block + 2 * C * t;
      float* __restrict sb = sg + C;
      std::fill(acc, acc + 2 * C, 0.0);
      const std::int64_t end = rows * (t + 1) / nt;
      for (std::int64_t r0 = rows * t / nt; r0 < end; r0 += kBlock) {
        std::fill(sg, sg + 2 * C, 0.0f);
        for (std::int64_t r = r0; r < std::min(end, r0 + kBlock); ++r) {
          const T* __restrict d = dy + r * C;
#pragma omp simd
          for (std::int64_t c = 0; c < C; ++c) {
            const float g = static_cast<float>(d[c]);
            sg[c] += g * xhat(r, c);
            sb[c] += g;
          }
        }
        for (std::int64_t c = 0; c < 2 * C; ++c) acc[c] += double(sg[c]);
      }
    }
    for (std::int64_t c = 0; c < C; ++c) {
      double g = 0, b = 0;
      for (int t = 0; t < used; ++t) {
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
