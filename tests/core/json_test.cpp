// Typed JSON reads: integers only when they are integers and fit.
#include "elastic/core/json.hpp"

#include <doctest/doctest.h>

// One namespace per test file: the tests of a directory build as one translation unit.
namespace core_json_test {

using namespace elastic;
using nlohmann::json;

TEST_CASE("json_integer accepts integers that fit and names the field otherwise") {
  CHECK(json_integer<int>(json::parse("42"), "x") == 42);
  CHECK(json_integer<std::int64_t>(json::parse("-7"), "x") == -7);
  CHECK(json_integer<std::uint64_t>(json::parse("18446744073709551615"), "x") == 18446744073709551615ull);
  CHECK_THROWS_WITH_AS(json_integer<int>(json::parse("3.5"), "threads"),
                       doctest::Contains("threads must be an integer, got 3.5"), Error);
  // Too large for any integer type: parsed as a double, refused without converting it.
  CHECK_THROWS_WITH_AS(
      json_integer<std::int64_t>(json::parse("377777777777777777777777777777777777777777772"), "input_size"),
      doctest::Contains("input_size must be an integer"), Error);
  CHECK_THROWS_WITH_AS(json_integer<int>(json::parse("4294967296"), "epoch"),
                       doctest::Contains("epoch = 4294967296 is out of range"), Error);
  CHECK_THROWS_WITH_AS(json_integer<std::uint64_t>(json::parse("-1"), "step"),
                       doctest::Contains("step = -1 is out of range"), Error);
  CHECK_THROWS_AS(json_integer<int>(json::parse("\"7\""), "x"), Error);
  CHECK_THROWS_AS(json_integer<int>(json::parse("true"), "x"), Error);
}

TEST_CASE("json_number accepts any number and nothing else") {
  CHECK(json_number(json::parse("2"), "x") == 2.0);
  CHECK(json_number(json::parse("-0.25"), "x") == -0.25);
  CHECK_THROWS_WITH_AS(json_number(json::parse("null"), "importance"), doctest::Contains("importance must be a number"),
                       Error);
}

}  // namespace core_json_test
