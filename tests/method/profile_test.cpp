// Profile files: a valid one parses; each malformation is refused naming the file.
#include "elastic/method/profile.hpp"

#include <doctest/doctest.h>

// One namespace per test file: the tests of a directory build as one translation unit.
namespace method_profile_test {

using namespace elastic;

namespace {
const char* kValid = R"({"key": {"model": "m", "input_size": 32, "num_classes": 5, "batch": 8, "threads": 2,
  "cpu": "c", "optimizer": "sgdw"}, "units": ["a", "b"], "t_fwd_ms": 2.0, "t_fwd_spread_ms": 0.1,
  "t_fwd_frozen_ms": 1.5, "t_fw_ms": [0.375, 0.125], "t_dw_ms": [0.5, 0.25],
  "t_dy_ms": [0.1, 0.2], "t_dw_spread_ms": [0, 0], "t_dy_spread_ms": [0, 0]})";

std::string with(const std::string& from, const std::string& to) {
  std::string s = kValid;
  const auto at = s.find(from);
  REQUIRE(at != std::string::npos);
  return s.replace(at, from.size(), to);
}
}  // namespace

TEST_CASE("a valid profile parses with its key and times") {
  const Profile p = Profile::parse(kValid, "p.json");
  CHECK(p.key.model == "m");
  CHECK(p.key.batch == 8);
  CHECK(p.units == std::vector<std::string>{"a", "b"});
  CHECK(p.t_bwd_full() == doctest::Approx(1.05));
  CHECK(p.t_bwd({false, true}) == doctest::Approx(0.2 + 0.25));
  CHECK(p.key.optimizer == "sgdw");
  CHECK(p.step_ms({false, true}) == doctest::Approx(1.5 + 0.125 + 0.2 + 0.25));
}

TEST_CASE("malformed profiles are refused, naming the file and the fault") {
  const std::pair<std::string, std::string> cases[] = {
      {with("\"input_size\": 32", "\"input_size\": 3e44"), "input_size must be an integer"},
      {with("\"threads\": 2", "\"threads\": 99999999999"), "threads = 99999999999 is out of range"},
      {with("[0.5, 0.25]", "[0.5]"), "2 units but 1 t_dw"},
      {with("[0.1, 0.2]", "[0.1, -0.2]"), "unit 'b' has a negative or NaN time"},
      {with("\"t_fwd_ms\": 2.0", "\"t_fwd_ms\": 0"), "t_fwd_ms must be positive"},
      {with("\"t_fwd_frozen_ms\": 1.5", "\"t_fwd_frozen_ms\": 2.5"), "t_fwd_frozen_ms must be positive and at most"},
      {with("[0.375, 0.125]", "[0.375]"), "2 units but"},
      {with("\"t_fw_ms\"", "\"t_fw_old\""), "predates the model of the trainer's step"},
      {with("\"optimizer\": \"sgdw\"", "\"opt\": \"sgdw\""), "malformed"},
      {with("\"units\"", "\"unitz\""), "malformed"},
      {with("\"optimizer\": \"sgdw\"", "\"optimizer\": \"sgdw\", \"precision\": \"fp16\""),
       "key.precision 'fp16' is not one of fp32, bf16"},
      {"{", "malformed"},
  };
  for (const auto& [text, message] : cases) {
    CAPTURE(message);
    CHECK_THROWS_WITH_AS(Profile::parse(text, "bad/p.json"), doctest::Contains(message.c_str()), Error);
    CHECK_THROWS_WITH_AS(Profile::parse(text, "bad/p.json"), doctest::Contains("'bad/p.json'"), Error);
  }
}

// A profile holds the precision it was measured in (one written before bf16 existed has none:
// it was fp32), and a run in the other precision refuses it, naming the field.
TEST_CASE("a profile's precision is part of its key") {
  const Profile legacy = Profile::parse(kValid, "p.json");
  CHECK(legacy.key.precision == "fp32");
  const Profile bf16 =
      Profile::parse(with("\"optimizer\": \"sgdw\"", "\"optimizer\": \"sgdw\", \"precision\": \"bf16\""), "b.json");
  CHECK(bf16.key.precision == "bf16");
  CHECK(Profile::parse(bf16.to_json().dump(), "again.json").key.precision == "bf16");
  ProfileKey want = legacy.key;
  CHECK_NOTHROW(legacy.check_matches(want, "p.json"));
  want.precision = "bf16";
  CHECK_THROWS_WITH_AS(legacy.check_matches(want, "p.json"),
                       doctest::Contains("'p.json' was measured for precision fp32, but this run has precision bf16"),
                       Error);
  CHECK_NOTHROW(bf16.check_matches(want, "b.json"));
  want.precision = "fp32";
  CHECK_THROWS_WITH_AS(bf16.check_matches(want, "b.json"),
                       doctest::Contains("'b.json' was measured for precision bf16, but this run has precision fp32"),
                       Error);
}

}  // namespace method_profile_test
