#include "elastic/method/timing_profiler.hpp"

#include <doctest/doctest.h>

#include "elastic/core/random.hpp"
#include "elastic/models/zoo.hpp"
#include "elastic/optim/optimizer.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace method_timing_profiler_test {

using namespace elastic;

namespace fs = std::filesystem;

// What the profile predicts against measured steps is a timing claim: it is
// measured in benchmarks/rho_claim (through the Trainer), never asserted here.
TEST_CASE(
    "the profiler prices the trainer's step with the run's optimizer and leaves model and optimizer as they were") {
  Context ctx(2);
  Model m = build_model("resnet50", ctx, {.num_classes = 10, .input_size = 64, .batch = 4});
  Rng rng(1);
  Tensor x(m.input_shape);
  for (auto& v : x.span()) v = rng.normal();
  m.graph->write(m.images, x);
  m.loss_node().set_labels(std::vector<std::int32_t>{1, 2, 3, 4});
  const auto units = selection_units(*m.graph);
  std::vector<bool> mask(m.params().size(), false);
  mask.back() = true;
  m.graph->select(mask);
  const auto values = m.params().value_arena();
  const std::vector<float> before(values.begin(), values.end());
  Adam adam;
  adam.attach(m.params());
  const OptimizerState adam_before = adam.state();
  const Profile p = TimingProfiler<>({.warmup = 1, .repeats = 3}).run(m, ctx.threads(), mask, adam);
  REQUIRE(p.units.size() == units.size());
  REQUIRE(p.t_fw.size() == units.size());
  CHECK(p.key.optimizer == "adam");
  CHECK(p.key.precision == "fp32");
  CHECK(TimingProfiler<>({.warmup = 0, .repeats = 1}).run(m, ctx.threads(), mask).key.optimizer == "sgdw");
  double added = 0;
  for (std::size_t u = 0; u < units.size(); ++u) {
    CHECK(p.t_fw[u] >= 0);
    CHECK(p.t_dw[u] > 0);  // a kernel and an update always take some time
    added += p.t_fw[u];
  }
  CHECK(p.t_fwd_frozen > 0);
  CHECK(p.t_fwd == doctest::Approx(p.t_fwd_frozen + added));
  CHECK(p.full_step_ms() == doctest::Approx(p.t_fwd + p.t_bwd_full()));
  CHECK(p.step_ms(std::vector<bool>(units.size(), false)) == doctest::Approx(p.t_fwd_frozen));
  // Only scratch buffers were updated: weights and Adam's state are untouched, the plan restored.
  CHECK(std::equal(before.begin(), before.end(), m.params().value_arena().begin()));
  CHECK(adam.state() == adam_before);
  CHECK(m.graph->plan().selected == mask);
}

TEST_CASE("a bf16 model's profile key says bf16") {
  if (!precision_supported(Precision::bf16)) {
    MESSAGE("not run: this CPU has no avx512_bf16");
    return;
  }
  Context ctx(2);
  Model m =
      build_model("mobilenetv2", ctx, {.num_classes = 5, .input_size = 32, .batch = 2, .precision = Precision::bf16});
  const SGDW sgd;
  CHECK(profile_key(m, 2, sgd).precision == "bf16");
  Model f = build_model("mobilenetv2", ctx, {.num_classes = 5, .input_size = 32, .batch = 2});
  CHECK(profile_key(f, 2, sgd).precision == "fp32");
}

TEST_CASE("profiles round-trip through JSON and refuse another model, machine or setting by name") {
  Profile p;
  p.key = {"resnet50", 224, 200, 4, 2, "Some CPU", "sgdw"};
  p.units = {"conv1", "fc"};
  p.t_fwd = 10;
  p.t_fwd_frozen = 9;
  p.t_fw = {0.75, 0.25};
  p.t_dw = {1, 2};
  p.t_dy = {3, 4};
  p.t_dw_spread = {0.1, 0.2};
  p.t_dy_spread = {0.3, 0.4};
  const auto path = fs::temp_directory_path() / fmt::format("elastic_profile_{}.json", ::getpid());
  p.save(path);
  const Profile q = Profile::load(path);
  CHECK(q.key == p.key);
  CHECK(q.t_dw == p.t_dw);
  CHECK(q.t_dy == p.t_dy);
  CHECK(q.t_fw == p.t_fw);
  CHECK(q.t_fwd_frozen == 9);
  // A step: forward with every unit frozen, plus what each trained unit adds forward and backward.
  CHECK(q.step_ms({false, true}) == doctest::Approx(9 + 0.25 + 6));
  CHECK(q.step_ms({true, false}) == doctest::Approx(9 + 0.75 + 8));
  CHECK(q.full_step_ms() == doctest::Approx(20));
  CHECK(q.t_bwd_full() == doctest::Approx(10));
  CHECK(q.t_bwd({false, true}) == doctest::Approx(6));
  CHECK(q.t_bwd({true, false}) == doctest::Approx(8));
  CHECK_NOTHROW(q.check_matches(p.key, path.string()));
  auto other = p.key;
  other.model = "vgg16";
  CHECK_THROWS_WITH_AS(q.check_matches(other, path.string()), doctest::Contains("model resnet50"), Error);
  other = p.key;
  other.cpu = "Another CPU";
  CHECK_THROWS_WITH_AS(q.check_matches(other, path.string()), doctest::Contains("cpu"), Error);
  other = p.key;
  other.optimizer = "adam";
  CHECK_THROWS_WITH_AS(q.check_matches(other, path.string()), doctest::Contains("optimizer sgdw"), Error);
  other = p.key;
  other.batch = 8;
  CHECK_THROWS_WITH_AS(q.check_matches(other, path.string()), doctest::Contains("batch size 4"), Error);
  std::ofstream(path) << R"({"key": {"model": "x"}})";
  CHECK_THROWS_WITH_AS(Profile::load(path), doctest::Contains("malformed"), Error);
  fs::remove(path);
}

}  // namespace method_timing_profiler_test
