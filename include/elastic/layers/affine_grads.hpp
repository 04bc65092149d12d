// The gradients of a normalization's per-feature scale and shift: two sums over
// rows of a (rows, C) row-major gradient, d gamma[c] = sum dy * xhat and
// d beta[c] = sum dy, accumulated in double per thread and then combined.
// Shared by BatchNorm2d (features = channels) and LayerNorm (features = last dim).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include <omp.h>

namespace elastic::detail {

class AffineGrads {
 public:
  // Sizes the per-thread scratch once (setup), for at most the current OpenMP thread count.
  void reserve(std::int64_t features) {
    c_ = features;
    threads_ = omp_get_max_threads();
    partial_.assign(static_cast<std::size_t>(2 * c_ * threads_), 0.0);
  }

  // xhat(r, c) gives the normalized input of row r, feature c.
  template <class Xhat>
  void run(std::int64_t rows, const float* dy, Xhat xhat, float* dgamma, float* dbeta) {
    const std::int64_t C = c_;
    double* partial = partial_.data();
    int used = 1;
#pragma omp parallel num_threads(threads_)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
#pragma omp single
      used = nt;
      double* acc = partial + 2 * C * t;  // [C] sum dy * xhat, [C] sum dy
      std::fill(acc, acc + 2 * C, 0.0);
      for (std::int64_t r = rows * t / nt; r < rows * (t + 1) / nt; ++r) {
        const float* d = dy + r * C;
#pragma omp simd
        for (std::int64_t c = 0; c < C; ++c) {
          acc[c] += double(d[c]) * xhat(r, c);
          acc[C + c] += double(d[c]);
        }
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
  std::vector<double> partial_;  // (threads, 2, C)
};

}  // namespace elastic::detail
