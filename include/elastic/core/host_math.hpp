// Elementwise math over flat float (and bf16) buffers on the host (optimizer updates,
// gradient accumulation, weight copies): Eigen array expressions over maps of
// the buffers, run on contiguous chunks split across the OpenMP threads when a
// buffer is large enough to pay for waking them. Eigen vectorizes each chunk's
// expression; the chunking is what spreads it over the cores.
#pragma once

#include <algorithm>
#include <cstdint>

#include <omp.h>

#include <Eigen/Core>

namespace elastic::host {

// bf16 values on the host: 16 bits, fp32's exponent; conversion from float
// rounds to nearest even, as oneDNN's and PyTorch's do.
using bf16 = Eigen::bfloat16;

using Array = Eigen::Map<Eigen::ArrayXf>;
using ConstArray = Eigen::Map<const Eigen::ArrayXf>;

inline Array array(float* p, std::int64_t n) { return Array(p, static_cast<Eigen::Index>(n)); }
inline ConstArray array(const float* p, std::int64_t n) { return ConstArray(p, static_cast<Eigen::Index>(n)); }

// Below this many elements one thread does it all: waking the others costs
// more than it saves.
inline constexpr std::int64_t kParallelMin = 32768;

// Calls f(begin, count) on blocks that cover [0, n) once: each thread takes
// one contiguous range (boundaries on multiples of 16 elements, one cache
// line; one thread for n <= kParallelMin) and walks it in blocks of kBlock
// elements, so that an update written as several expressions (the slots, then
// the weights) finds each block's operands in L1 on its second pass. Each
// element is computed the same way on any thread count.
inline constexpr std::int64_t kBlock = 1024;

template <class F>
void for_chunks(std::int64_t n, F&& f) {
  const auto walk = [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t b = begin; b < end; b += kBlock) f(b, std::min(kBlock, end - b));
  };
  if (n <= kParallelMin) {
    walk(0, n);
    return;
  }
#pragma omp parallel
  {
    const std::int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const std::int64_t lines = (n + 15) / 16;
    walk(std::min(n, lines * t / nt * 16), std::min(n, lines * (t + 1) / nt * 16));
  }
}

// to[i] = from[i]
inline void copy(float* to, const float* from, std::int64_t n) {
  for_chunks(n, [&](std::int64_t b, std::int64_t c) { array(to + b, c) = array(from + b, c); });
}

// acc[i] += add[i]
inline void accumulate(float* acc, const float* add, std::int64_t n) {
  for_chunks(n, [&](std::int64_t b, std::int64_t c) { array(acc + b, c) += array(add + b, c); });
}

// acc[i] += add[i] on bf16 values: the sum in fp32, rounded once to bf16.
inline void accumulate(bf16* acc, const bf16* add, std::int64_t n) {
  using Map = Eigen::Map<Eigen::Array<bf16, Eigen::Dynamic, 1>>;
  using ConstMap = Eigen::Map<const Eigen::Array<bf16, Eigen::Dynamic, 1>>;
  for_chunks(n, [&](std::int64_t b, std::int64_t c) {
    Map a(acc + b, static_cast<Eigen::Index>(c));
    a = (a.cast<float>() + ConstMap(add + b, static_cast<Eigen::Index>(c)).cast<float>()).cast<bf16>();
  });
}

}  // namespace elastic::host
