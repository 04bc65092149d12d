#include "elastic/core/denormals.hpp"

#include <limits>
#include <vector>

#include <omp.h>

#include <doctest/doctest.h>

#include "elastic/core/context.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace core_denormals_test {

using namespace elastic;

namespace {
// Computed at run time so the compiler cannot fold them under its own rules.
volatile float tiny_product_a = 1e-30f, tiny_product_b = 1e-10f;  // 1e-40: a denormal result
volatile float denormal_input = 1e-39f;

// Per OpenMP thread of a team of `n`: whether it flushes, and what 1e-30 * 1e-10 and 1e-39 * 1 give.
struct ThreadView {
  bool flushing = false;
  float product = -1, through = -1;
};
std::vector<ThreadView> look_from_team(int n) {
  std::vector<ThreadView> out(static_cast<std::size_t>(n));
#pragma omp parallel num_threads(n)
  {
    auto& v = out[static_cast<std::size_t>(omp_get_thread_num())];
    v.flushing = flushing_denormals();
    v.product = tiny_product_a * tiny_product_b;
    v.through = denormal_input * 1.0f;
  }
  return out;
}
}  // namespace

TEST_CASE("count_denormals counts nonzero values below the smallest normal float, of either sign") {
  const float min_normal = std::numeric_limits<float>::min();
  const std::vector<float> v{0.0f,
                             1e-39f,
                             -1e-40f,
                             min_normal,
                             -min_normal,
                             1.0f,
                             std::numeric_limits<float>::denorm_min(),
                             std::numeric_limits<float>::quiet_NaN(),
                             std::numeric_limits<float>::infinity()};
  CHECK(count_denormals(v) == 3);
  CHECK(count_denormals(std::span<const float>(v).subspan(3)) == 1);
}

TEST_CASE("a Context flushes denormals on its thread and on every OpenMP thread, unless told not to") {
  {
    Context off(2, false);
    CHECK_FALSE(flushing_denormals());
    for (const auto& v : look_from_team(2)) {
      CHECK_FALSE(v.flushing);
      CHECK(v.product > 0.0f);  // gradual underflow: a denormal
      CHECK(v.through == 1e-39f);
    }
  }
  Context ctx(2);
  CHECK(ctx.flushes_denormals());
  CHECK(flushing_denormals());
  for (const auto& v : look_from_team(2)) {
    CHECK(v.flushing);
    CHECK(v.product == 0.0f);  // FTZ: a denormal result becomes 0
    CHECK(v.through == 0.0f);  // DAZ: a denormal input reads as 0
  }
  // A thread started later by OpenMP (a larger team) copies the mode too.
  for (const auto& v : look_from_team(3)) CHECK(v.flushing);
  set_flush_denormals(false);
  CHECK_FALSE(flushing_denormals());
  set_flush_denormals(true);
}

}  // namespace core_denormals_test
