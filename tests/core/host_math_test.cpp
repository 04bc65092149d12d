#include "elastic/core/host_math.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <numbers>
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

TEST_CASE("exp_nonpositive is e^t within 2e-7 relative on [-87, 0], in vectorized()'s AVX-512 copy of a loop too") {
  std::vector<float> t;
  for (int i = 0; i <= 870000; ++i) t.push_back(-static_cast<float>(i) * 1e-4f);
  std::vector<float> got(t.size());
  host::vectorized([&]() ELASTIC_INLINE {
    for (std::size_t i = 0; i < t.size(); ++i) got[i] = host::exp_nonpositive(t[i]);
  });
  double worst = 0, worst_scalar = 0;
  for (std::size_t i = 0; i < t.size(); ++i) {
    const double want = std::exp(static_cast<double>(t[i]));
    worst = std::max(worst, std::abs(got[i] - want) / want);
    worst_scalar = std::max(worst_scalar, std::abs(host::exp_nonpositive(t[i]) - want) / want);
  }
  CHECK(worst < 2e-7);
  CHECK(worst_scalar < 2e-7);
  CHECK(host::exp_nonpositive(0.0f) == 1.0f);
  // Below -87 the result is e^-87's: tiny, positive, never a wrapped exponent.
  for (const float below : {-87.5f, -100.0f, -1e30f, -std::numeric_limits<float>::infinity()}) {
    CAPTURE(below);
    CHECK(host::exp_nonpositive(below) == host::exp_nonpositive(-87.0f));
  }
  CHECK(host::exp_nonpositive(-87.0f) > 0.0f);
  CHECK(host::exp_nonpositive(-87.0f) < 2e-38f);
}

TEST_CASE("gelu_at gives the erf GELU and its derivative within a few 1e-7 of float64's on [-10, 10]") {
  double worst_value = 0, worst_slope = 0;
  for (int i = -100000; i <= 100000; ++i) {
    const float x = static_cast<float>(i) * 1e-4f;
    const double X = x, cdf = 0.5 * (1 + std::erf(X / std::sqrt(2.0)));
    const double value = X * cdf, slope = cdf + X * std::exp(-0.5 * X * X) / std::sqrt(2 * std::numbers::pi);
    const host::GeluAt g = host::gelu_at(x);
    worst_value = std::max(worst_value, std::abs(g.value - value) / std::max(1.0, std::abs(X)));
    worst_slope = std::max(worst_slope, std::abs(g.slope - slope));
  }
  CHECK(worst_value < 3e-7);
  CHECK(worst_slope < 5e-7);
  // Written out: gelu(1) = 0.5 * (1 + erf(1 / sqrt 2)) = 0.8413447, gelu'(1) = 0.8413447 + e^-0.5 / sqrt(2 pi)
  // = 1.0833155; gelu'(0) = 1/2; far out the GELU is x or 0 and its slope 1 or 0.
  CHECK(host::gelu_at(1.0f).value == doctest::Approx(0.8413447460685429).epsilon(1e-6));
  CHECK(host::gelu_at(1.0f).slope == doctest::Approx(1.0833154705876864).epsilon(1e-6));
  CHECK(host::gelu_at(0.0f).value == 0.0f);
  CHECK(host::gelu_at(0.0f).slope == 0.5f);
  CHECK(host::gelu_at(100.0f).value == 100.0f);
  CHECK(host::gelu_at(100.0f).slope == 1.0f);
  CHECK(host::gelu_at(-100.0f).value == 0.0f);
  CHECK(host::gelu_at(-100.0f).slope == 0.0f);
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(host::gelu_at(1e30f).slope == 1.0f);
  CHECK(host::gelu_at(inf).value == inf);
  CHECK(host::gelu_at(inf).slope == 1.0f);
  CHECK(host::gelu_at(-inf).slope == 0.0f);
  // The negative side is computed without cancellation: gelu(-7) = -7 Phi(-7) = -8.96e-12, to 1%.
  CHECK(host::gelu_at(-7.0f).value == doctest::Approx(-7 * 1.279812543885835e-12).epsilon(1e-2).scale(0));
}

}  // namespace core_host_math_test
