#include "elastic/optim/schedule.hpp"

#include <doctest/doctest.h>

// One namespace per test file: the tests of a directory build as one translation unit.
namespace optim_schedule_test {

using namespace elastic;

TEST_CASE("cosine decay follows Keras: initial, half, floor, and stays at the floor past the end") {
  const CosineDecay c{0.1f, 1000};
  CHECK(c(0) == doctest::Approx(0.1));
  CHECK(c(500) == doctest::Approx(0.05));
  CHECK(c(250) == doctest::Approx(0.1 * 0.5 * (1 + std::cos(std::numbers::pi / 4))));
  CHECK(c(1000) == doctest::Approx(0.0));
  CHECK(c(5000) == doctest::Approx(0.0));
  const CosineDecay floor{0.1f, 100, 0.2f};
  CHECK(floor(100) == doctest::Approx(0.02));
  CHECK(floor(50) == doctest::Approx(0.1 * (0.8 * 0.5 + 0.2)));
}

}  // namespace optim_schedule_test
