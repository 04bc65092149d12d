#include "elastic/core/host_math.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <vector>

#include <omp.h>

#include <doctest/doctest.h>

// One namespace per test file: the tests of a directory build as one translation unit.
namespace core_host_math_test {

using namespace elastic;

TEST_CASE("for_chunks covers every element once, in blocks of at most kBlock, on any thread count") {
  for (const int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    for (const std::int64_t n : {std::int64_t{0}, std::int64_t{1}, std::int64_t{1025}, host::kParallelMin,
                                 host::kParallelMin + 1, std::int64_t{100003}}) {
      CAPTURE(threads);
      CAPTURE(n);
      std::vector<int> hits(static_cast<std::size_t>(n), 0);
      bool small_blocks = true;
      host::for_chunks(n, [&](std::int64_t b, std::int64_t c) {
        small_blocks = small_blocks && c > 0 && c <= host::kBlock;
        for (std::int64_t i = b; i < b + c; ++i) ++hits[static_cast<std::size_t>(i)];
      });
      CHECK(small_blocks);
      CHECK(std::count(hits.begin(), hits.end(), 1) == n);
    }
  }
  omp_set_num_threads(2);
}

TEST_CASE("copy and accumulate over buffers longer than one thread's share") {
  const std::int64_t n = 3 * host::kParallelMin + 7;
  std::vector<float> a(static_cast<std::size_t>(n)), b(a.size()), c(a.size(), 1.0f);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = float(i % 1000) * 0.5f;
  host::copy(b.data(), a.data(), n);
  CHECK(b == a);
  host::accumulate(c.data(), a.data(), n);
  bool all = true;
  for (std::size_t i = 0; i < a.size(); ++i) all = all && c[i] == 1.0f + a[i];
  CHECK(all);
}

TEST_CASE("bf16 accumulate adds in fp32 and rounds once to nearest even, as Eigen's casts do") {
  const std::int64_t n = 3 * host::kParallelMin + 7;
  std::vector<host::bf16> acc(static_cast<std::size_t>(n)), add(acc.size());
  // Every bf16 bit pattern with a finite value, paired so that many sums land on rounding ties.
  for (std::size_t i = 0; i < acc.size(); ++i) {
    const auto bits = static_cast<std::uint16_t>(i % 65536);
    const bool finite = (bits & 0x7F80u) != 0x7F80u;
    acc[i] = Eigen::numext::bit_cast<host::bf16>(finite ? bits : std::uint16_t{0x3F80u});
    add[i] = host::bf16(float(acc[i]) * (i % 3 == 0 ? 0.00390625f : -0.5f) + float(i % 7));
  }
  std::vector<host::bf16> want(acc.size());
  for (std::size_t i = 0; i < acc.size(); ++i) want[i] = host::bf16(float(acc[i]) + float(add[i]));
  host::accumulate(acc.data(), add.data(), n);
  std::int64_t differ = 0;
  for (std::size_t i = 0; i < acc.size(); ++i)
    differ += Eigen::numext::bit_cast<std::uint16_t>(acc[i]) != Eigen::numext::bit_cast<std::uint16_t>(want[i]);
  CHECK(differ == 0);
}

TEST_CASE("bf16 accumulate keeps infinities and NaNs as fp32 addition gives them") {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float a[] = {nan, 1.0f, inf, inf, -inf, 3.0e38f, 1.0f};
  const float b[] = {1.0f, nan, -inf, 1.0f, -2.0f, 3.0e38f, 2.0f};
  constexpr std::size_t n = std::size(a);
  std::vector<host::bf16> acc(n), add(n);
  for (std::size_t i = 0; i < n; ++i) {
    acc[i] = host::bf16(a[i]);
    add[i] = host::bf16(b[i]);
  }
  host::accumulate(acc.data(), add.data(), std::int64_t(n));
  for (std::size_t i = 0; i < n; ++i) {
    CAPTURE(i);
    const float want = float(host::bf16(float(host::bf16(a[i])) + float(host::bf16(b[i]))));
    const float got = float(acc[i]);
    if (std::isnan(want))
      CHECK(std::isnan(got));
    else
      CHECK(got == want);
  }
  CHECK(float(acc[5]) == inf);  // an overflow rounds to infinity
}

}  // namespace core_host_math_test
