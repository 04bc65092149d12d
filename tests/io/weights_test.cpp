#include "elastic/io/weights.hpp"

#include <doctest/doctest.h>

// One namespace per test file: the tests of a directory build as one translation unit.
namespace io_weights_test {

using namespace elastic;
namespace fs = std::filesystem;

namespace {
ParamStore make_store(std::int64_t classes, std::uint64_t seed) {
  ParamStore s;
  s.add("conv1.weight", {4, 3, 3, 3}, ParamRole::weight, Init::fan_in(27));
  s.add("bn1.weight", {4}, ParamRole::norm_scale, Init::one());
  s.add("bn1.bias", {4}, ParamRole::norm_shift, Init::zero());
  s.add_buffer("bn1.running_mean", {4}, 0.0f);
  s.add_buffer("bn1.running_var", {4}, 1.0f);
  s.add("fc.weight", {classes, 4}, ParamRole::weight, Init::fan_in(4));
  s.add("fc.bias", {classes}, ParamRole::bias, Init::fan_in(4));
  s.allocate(seed);
  return s;
}
fs::path temp(const char* name) { return fs::temp_directory_path() / fmt::format("elastic_w_{}_{}", name, ::getpid()); }
}  // namespace

TEST_CASE("weights save and load by name, buffers included") {
  auto a = make_store(10, 1);
  a.buffer(0).values()[2] = 0.5f;
  const auto path = temp("rt");
  io::save_weights(a, path);
  auto b = make_store(10, 2);
  CHECK(b[0].values()[0] != a[0].values()[0]);
  const auto report = io::load_weights(b, path);
  CHECK(report.loaded == 7);
  for (std::size_t k = 0; k < a.size(); ++k)
    for (std::int64_t i = 0; i < a[k].size(); ++i) CHECK(b[k].value[i] == a[k].value[i]);
  CHECK(b.buffer(0).values()[2] == 0.5f);
  fs::remove(path);
}

TEST_CASE("a backbone loads into a model with a new head in one call") {
  const auto pretrained = make_store(1000, 1);
  const auto path = temp("backbone");
  io::save_weights(pretrained, path);
  auto model = make_store(5, 9);
  const float head_before = model.params()[3].values()[0];
  const auto report = io::load_weights(model, path, {.skip_prefixes = {"fc."}});
  CHECK(report.loaded == 5);
  CHECK(report.ignored.size() == 2);
  CHECK(model[0].values()[5] == pretrained[0].values()[5]);
  CHECK(model.params()[3].values()[0] == head_before);
  // Without skipping the head, the class count mismatch is reported by name.
  CHECK_THROWS_WITH_AS(io::load_weights(model, path), doctest::Contains("fc.weight (file (1000, 4), model (5, 4))"),
                       Error);
  fs::remove(path);
}

TEST_CASE("missing, unexpected and mis-shaped tensors are reported together") {
  io::SafetensorsWriter w;
  const std::vector<float> z(108, 0.0f);
  w.add_f32("conv1.weight", {4, 3, 3, 3}, z);
  w.add_f32("bn1.weight", {5}, std::span(z).first(5));  // wrong shape
  w.add_f32("bn1.running_mean", {4}, std::span(z).first(4));
  w.add_f32("bn1.running_var", {4}, std::span(z).first(4));
  w.add_f32("fc.weight", {10, 4}, std::span(z).first(40));
  w.add_f32("fc.bias", {10}, std::span(z).first(10));
  w.add_f32("layer9.weight", {2}, std::span(z).first(2));                  // unexpected
  w.add_i64("bn1.num_batches_tracked", {}, std::vector<std::int64_t>{7});  // ignored, as torch writes it
  const auto path = temp("bad");
  w.write(path);
  auto s = make_store(10, 1);
  const float keep = s[0].values()[0];
  try {
    io::load_weights(s, path);
    FAIL("expected an error");
  } catch (const Error& e) {
    const std::string m = e.what();
    CHECK(m.find("missing 1 tensor(s): bn1.bias") != std::string::npos);
    CHECK(m.find("bn1.weight (file (5), model (4))") != std::string::npos);
    CHECK(m.find("unexpected 1 tensor(s): layer9.weight") != std::string::npos);
    CHECK(m.find("num_batches_tracked") == std::string::npos);
    CHECK(m.find(path.string()) != std::string::npos);
  }
  CHECK(s[0].values()[0] == keep);  // nothing is loaded from a file that does not fit
  fs::remove(path);
}

}  // namespace io_weights_test
