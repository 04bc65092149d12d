#include <doctest/doctest.h>

#include "elastic/core/random.hpp"
#include "elastic/method/timing_profiler.hpp"
#include "elastic/models/zoo.hpp"
#include "elastic/optim/optimizer.hpp"

using namespace elastic;

namespace fs = std::filesystem;

TEST_CASE("predicted step time T_fwd + T_b(m) matches the measured step of that plan within 15%") {
  Context ctx(2);
  Model m = build_model("resnet50", ctx, {.num_classes = 10, .input_size = 64, .batch = 4});
  Rng rng(1);
  Tensor x(m.input_shape);
  for (auto& v : x.span()) v = rng.normal();
  m.graph->write(m.images, x);
  m.loss_node().set_labels(std::vector<std::int32_t>{1, 2, 3, 4});
  const auto units = selection_units(*m.graph);
  const std::vector<bool> all(m.params().size(), true);
  // Each mask's prediction comes from profiles taken just before its steps are measured,
  // the quietest of two, as the steps are the quietest of five medians: this machine's
  // speed drifts over seconds, and noise only ever adds time, to either side.
  const auto quiet_profile = [&] {
    Profile p = TimingProfiler<>({.warmup = 3, .repeats = 9}).run(m, ctx.threads(), all);
    Profile q = TimingProfiler<>({.warmup = 3, .repeats = 9}).run(m, ctx.threads(), all);
    return q.t_fwd + q.t_bwd_full() < p.t_fwd + p.t_bwd_full() ? q : p;
  };
  {
    const Profile p = quiet_profile();
    REQUIRE(p.t_dw.size() == units.size());
    CHECK(p.t_fwd > 0);
    CHECK(p.t_bwd_full() > p.t_fwd);  // a backward costs more than a forward
  }
  SGDW opt;
  for (int trial = 0; trial < 5; ++trial) {
    std::vector<bool> unit_mask(units.size());
    // Masks from "everything" to "the top few units": the range the selector produces.
    const double keep = trial == 0 ? 1.0 : 0.15 * trial;
    const std::size_t from = static_cast<std::size_t>(double(units.size()) * (1.0 - keep));
    for (std::size_t u = 0; u < units.size(); ++u) unit_mask[u] = u >= from && (u == from || rng.uniform() < 0.7f);
    const auto mask = param_mask(units, unit_mask, m.params().size());
    // Up to three attempts, each with fresh profiles and steps: a slow spell of the
    // machine during one side's measurement fails one attempt; a wrong model fails all.
    double predicted = 0, measured = 0;
    for (int attempt = 0; attempt < 3; ++attempt) {
      const Profile p = quiet_profile();
      m.graph->select(mask);
      measured = 1e300;
      for (int round = 0; round < 5; ++round) {
        std::vector<double> ms;
        for (int i = 0; i < 10; ++i) {
          Stopwatch sw;
          m.graph->forward(true);
          m.graph->backward();
          opt.step(m.params(), mask, 1e-4f);
          if (i >= 2) ms.push_back(sw.elapsed_ms());
        }
        measured = std::min(measured, summarize(ms).median);
      }
      predicted = p.t_fwd + p.t_bwd(unit_mask);
      MESSAGE("keep ", keep, " (attempt ", attempt + 1, "): predicted ", predicted, " ms, measured ", measured, " ms");
      if (std::abs(predicted - measured) <= 0.15 * measured) break;
    }
    CHECK(std::abs(predicted - measured) <= 0.15 * measured);
  }
}

TEST_CASE("profiles round-trip through JSON and refuse another model, machine or setting by name") {
  Profile p;
  p.key = {"resnet50", 224, 200, 4, 2, "Some CPU"};
  p.units = {"conv1", "fc"};
  p.t_fwd = 10;
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
  other.batch = 8;
  CHECK_THROWS_WITH_AS(q.check_matches(other, path.string()), doctest::Contains("batch size 4"), Error);
  std::ofstream(path) << R"({"key": {"model": "x"}})";
  CHECK_THROWS_WITH_AS(Profile::load(path), doctest::Contains("malformed"), Error);
  fs::remove(path);
}
