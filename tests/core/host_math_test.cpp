#include "elastic/core/host_math.hpp"

#include <algorithm>
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

}  // namespace core_host_math_test
