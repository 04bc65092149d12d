// Elementwise math over flat float (and bf16) buffers on the host (optimizer updates,
// gradient accumulation, weight copies): Eigen array expressions over maps of
// the buffers, run on contiguous chunks split across the OpenMP threads when a
// buffer is large enough to pay for waking them. Eigen vectorizes each chunk's
// expression; the chunking is what spreads it over the cores.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include <omp.h>

#include <Eigen/Core>

namespace elastic::host {

// bf16 values on the host: 16 bits, fp32's exponent; conversion from float
// rounds to nearest even, as oneDNN's and PyTorch's do.
using bf16 = Eigen::bfloat16;

// Conversions for loops written over T = float or bf16 that must vectorize
// (Eigen's bf16 conversion branches on NaN, which stops the vectorizer): to
// float a shift; to bf16 round to nearest even, as Eigen's and oneDNN's do, a
// NaN kept a quiet NaN.
inline float to_float(float v) { return v; }
inline float to_float(bf16 v) {
  return std::bit_cast<float>(std::uint32_t{Eigen::numext::bit_cast<std::uint16_t>(v)} << 16);
}
template <class T>
T from_float(float v);
template <>
inline float from_float<float>(float v) {
  return v;
}
template <>
inline bf16 from_float<bf16>(float v) {
  const auto u = std::bit_cast<std::uint32_t>(v);
  const std::uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return Eigen::numext::bit_cast<bf16>(static_cast<std::uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded));
}

using Array = Eigen::Map<Eigen::ArrayXf>;
using ConstArray = Eigen::Map<const Eigen::ArrayXf>;

inline Array array(float* p, std::int64_t n) { return Array(p, static_cast<Eigen::Index>(n)); }
inline ConstArray array(const float* p, std::int64_t n) { return ConstArray(p, static_cast<Eigen::Index>(n)); }

// Below this many elements one thread does it all: waking the others costs
// more than it saves.
inline constexpr std::int64_t kParallelMin = 32768;

// Loops written once and compiled twice: for the build's own ISA, and for
// AVX-512 (F, BW, DQ, VL) when the build lacks it and the CPU has it (a
// header-only library cannot pick its users' -march; oneDNN's kernels are JIT
// compiled for the CPU, and host loops beside them should not run at SSE2's
// width). The body passed to vectorized() must be inlined into the AVX-512
// copy: give its lambda ELASTIC_INLINE. Results may differ between the two
// copies in the last bit (AVX-512 contracts multiply-adds).
#define ELASTIC_INLINE __attribute__((always_inline))
#if defined(__x86_64__) && !defined(__AVX512F__) && (defined(__GNUC__) || defined(__clang__))
#define ELASTIC_AVX512_DISPATCH 1
inline bool cpu_has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return yes;
}
template <class F>
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) void run_avx512(F& f) {
  f();
}
#endif

template <class F>
void vectorized(F&& f) {
#ifdef ELASTIC_AVX512_DISPATCH
  if (cpu_has_avx512()) {
    run_avx512(f);
    return;
  }
#endif
  f();
}

// Whether vectorized() runs AVX-512 code here (its copy, or the build's own ISA).
inline bool runs_avx512() {
#if defined(__AVX512F__)
  return true;
#elif defined(ELASTIC_AVX512_DISPATCH)
  return cpu_has_avx512();
#else
  return false;
#endif
}

// e^t for t <= 0: 2^n times a degree-7 Taylor polynomial of the remainder
// r = t - n ln 2 (|r| <= ln 2 / 2, relative error under 1e-8 before rounding),
// n = round(t / ln 2). t below -87 is taken as -87 (e^-87 = 1.6e-38, near the
// smallest normal float). No branch or library call, and always inlined: loops
// over it vectorize.
ELASTIC_INLINE inline float exp_nonpositive(float t) {
  t = t < -87.0f ? -87.0f : t;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float k = t * 1.44269504f + kRound;
  const float n = k - kRound;
  const std::int32_t e = std::bit_cast<std::int32_t>(k) - std::bit_cast<std::int32_t>(kRound);
  // ln 2 in two parts, the first with 15 significant bits, so n * 0.693145752f is exact.
  const float r = (t - n * 0.693145752f) - n * 1.42860677e-6f;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * std::bit_cast<float>((e + 127) << 23);
}

// The erf GELU and its derivative at x: with Phi(x) = (1 + erf(x / sqrt 2)) / 2,
// gelu(x) = x Phi(x) and gelu'(x) = Phi(x) + x e^(-x^2 / 2) / sqrt(2 pi).
// erf(z) = 1 - P(t) e^(-z^2), t = 1 / (1 + 0.3275911 z), z >= 0, is
// Abramowitz and Stegun's 7.1.26 (absolute error under 1.5e-7); its
// exponential is also the derivative's. Phi(-|x|) = P(t) e^(-x^2 / 2) / 2
// directly, so the negative side has no cancellation. Past |x| = 13.19, where
// e^(-x^2 / 2) is below the smallest normal float, the exponential is taken as
// 0: gelu is then x or 0 and gelu' 1 or 0 exactly, for infinite x too.
struct GeluAt {
  float value, slope;
};
ELASTIC_INLINE inline GeluAt gelu_at(float x) {
  const float z = std::abs(x) * 0.707106781f;
  const float t = 1.0f / (1.0f + 0.3275911f * z);
  const float poly =
      t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float h = -0.5f * x * x;
  const float e = h < -87.0f ? 0.0f : exp_nonpositive(h);
  const float tail = 0.5f * poly * e;  // Phi(-|x|)
  const float cdf = x < 0.0f ? tail : 1.0f - tail;
  // e is 0 from |x| = 13.19 on; x is cut to 0 from 14 on, for infinite x (inf * 0 is
  // NaN). (This form measured 20% faster in bf16 than one selecting on h < -87 twice.)
  const float near_x = std::abs(x) < 14.0f ? x : 0.0f;
  return {x * cdf, cdf + near_x * e * 0.398942280f};
}

// Calls f(begin, end, thread) on `threads` OpenMP threads, each with one
// contiguous range of [0, rows) (thread t of nt: rows * t / nt up to
// rows * (t + 1) / nt), the body compiled as vectorized() does.
template <class F>
void parallel_rows(std::int64_t rows, int threads, F&& f) {
#pragma omp parallel num_threads(threads)
  {
    const std::int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    vectorized([&]() ELASTIC_INLINE { f(rows * t / nt, rows * (t + 1) / nt, static_cast<int>(t)); });
  }
}

// Calls f(begin, count) on blocks that cover [0, n) once: each thread takes
// one contiguous range (boundaries on multiples of 16 elements, one cache
// line; one thread for n <= kParallelMin) and walks it in blocks of kBlock
// elements, so that an update written as several expressions (the slots, then
// the weights) finds each block's operands in L1 on its second pass. Each
// element is computed the same way on any thread count. The walk runs as
// vectorized() does: give f ELASTIC_INLINE. (Compiled for the build's SSE2,
// an optimizer update ran 3.6x slower right after oneDNN 2.6's bf16 inner
// product backward_weights with a bias, which leaves the vector registers'
// upper halves dirty: legacy SSE instructions pay for that state, VEX and
// EVEX ones do not. benchmarks/host_math, benchmarks/RESULTS.md.)
inline constexpr std::int64_t kBlock = 1024;

template <class F>
void for_chunks(std::int64_t n, F&& f) {
  const auto walk = [&](std::int64_t begin, std::int64_t end) ELASTIC_INLINE {
    vectorized([&]() ELASTIC_INLINE {
      for (std::int64_t b = begin; b < end; b += kBlock) f(b, std::min(kBlock, end - b));
    });
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
  for_chunks(n, [&](std::int64_t b, std::int64_t c) ELASTIC_INLINE { array(to + b, c) = array(from + b, c); });
}

// acc[i] += add[i]
inline void accumulate(float* acc, const float* add, std::int64_t n) {
  for_chunks(n, [&](std::int64_t b, std::int64_t c) ELASTIC_INLINE { array(acc + b, c) += array(add + b, c); });
}

// acc[i] += add[i] on bf16 values: the sum in fp32, rounded once to bf16 (to_float
// and from_float, which vectorize where Eigen's bf16 casts do not).
inline void accumulate(bf16* acc, const bf16* add, std::int64_t n) {
  for_chunks(n, [&](std::int64_t b, std::int64_t c) ELASTIC_INLINE {
    bf16* __restrict a = acc + b;
    const bf16* __restrict d = add + b;
    for (std::int64_t i = 0; i < c; ++i) a[i] = from_float<bf16>(to_float(a[i]) + to_float(d[i]));
  });
}

}  // namespace elastic::host
