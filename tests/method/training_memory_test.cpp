#include "elastic/method/training_memory.hpp"

#include <functional>

#include <doctest/doctest.h>

#include "elastic/models/zoo.hpp"
#include "elastic/testing/gradcheck.hpp"
#include "elastic/train/step.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace method_training_memory_test {

using namespace elastic;

namespace {
// Every other unit from `from` on.
std::vector<bool> every_other(std::size_t n, std::size_t from) {
  std::vector<bool> m(n, false);
  for (std::size_t u = from; u < n; u += 2) m[u] = true;
  return m;
}

// A model (batch 4) on a random batch, trained `steps` times with `opt` under the units
// `pick(number of units)` chooses.
struct Trained {
  Context ctx{2};
  Model m;
  std::vector<bool> units;
  Trained(const char* name, std::int64_t size, Optimizer& opt, int steps,
          const std::function<std::vector<bool>(std::size_t)>& pick) {
    m = build_model(name, ctx, {.num_classes = 10, .input_size = size, .batch = 4});
    testing::random_input(*m.graph, m.images, 1);
    m.loss_node().set_labels(std::vector<std::int32_t>{1, 2, 3, 4});
    const auto all = selection_units(*m.graph);
    units = pick(all.size());
    const auto mask = param_mask(all, units, m.params().size());
    m.graph->select(mask);
    TrainStep step(m, opt);
    for (int s = 0; s < steps; ++s) step(std::uint64_t(s), mask, 1e-3f);
  }
};
}  // namespace

TEST_CASE("each part of the model is what the engine holds: slots, copies, arena, streamed gradients") {
  SGDW opt;
  Trained t("mobilenetv2", 32, opt, 1, [](std::size_t n) { return every_other(n, n / 2); });
  Model& m = t.m;
  TrainingMemory mem(m, opt.slot_count());
  const std::size_t n = mem.size();
  const auto& train = t.units;
  const std::vector<bool> none(n, false);
  const MemoryBreakdown b = mem.training(train, none, none, true);
  CHECK(b.optimizer == std::int64_t(opt.slot_bytes()));  // the optimizer's own count
  CHECK(b.weight_copies == std::int64_t(m.graph->weight_copy_bytes()));
  CHECK(b.weight_copies > 0);
  CHECK(mem.training(train, none, none, false).weight_copies == 0);
  CHECK(b.activations == m.graph->plan_arena_bytes() + m.graph->own_bytes());
  CHECK(b.weights == m.params().value_bytes() + m.graph->pinned_bytes());
  std::int64_t largest = 0;
  for (std::size_t u = 0; u < n; ++u)
    if (train[u]) largest = std::max(largest, m.params().stream_bytes(mem.units()[u].node));
  CHECK(b.gradients == largest);
  // Slots of units trained earlier stay counted.
  const auto earlier = every_other(n, 0);
  std::int64_t earlier_slots = 0;
  for (std::size_t u = 0; u < n; ++u)
    if (earlier[u] && !train[u]) earlier_slots += mem.slot_bytes(u);
  CHECK(mem.training(train, earlier, none, true).optimizer == b.optimizer + earlier_slots);
  CHECK(b.total() == b.base + b.weights + b.weight_copies + b.activations + b.gradients + b.optimizer + b.scratch +
                         b.data + b.probe + b.checkpoint);
  // While the DP solves between steps: the plan's arena given back, the DP's tables taken; slots
  // as the optimizer holds them (here: the trained units' after their step).
  const MemoryBreakdown solve = mem.solving(train, train, none, true, 12345);
  CHECK(solve.activations == m.graph->own_bytes());
  CHECK(solve.selector == 12345);
  CHECK(solve.optimizer == b.optimizer);
  CHECK(solve.weight_copies == b.weight_copies);
  CHECK(solve.gradients == b.gradients);
  CHECK(solve.total() == b.total() - m.graph->plan_arena_bytes() + 12345);
  // Before the first selection the plan in force trains every unit, but no slots exist yet.
  CHECK(mem.solving(std::vector<bool>(n, true), none, none, true, 0).optimizer == 0);
  // The probe: the full plan's arena, w0 of every param and one param to read it back into,
  // and the optimizer's preview scratch (one param's slots).
  std::int64_t biggest = 0, every = 0;
  for (const Param& q : m.params().params()) {
    biggest = std::max(biggest, q.size() * std::int64_t(sizeof(float)));
    every += q.size() * std::int64_t(sizeof(float));
  }
  const std::int64_t preview = biggest * std::int64_t(opt.slot_count());
  const MemoryBreakdown p = mem.probe(none, ImportanceMetric::loss_drop);
  m.graph->select_all();
  CHECK(p.activations == m.graph->plan_arena_bytes() + m.graph->own_bytes());
  CHECK(p.weight_copies == 0);
  CHECK(p.probe == every + biggest + preview);
  CHECK(mem.probe(none, ImportanceMetric::grad_magnitude).probe == 0);
  // Spilled to a file, w0 takes no memory.
  CHECK(mem.probe(none, ImportanceMetric::loss_drop, {{}, "/tmp"}).probe == biggest + preview);
  // A scope of the upper half: its plan's arena, the frozen copies below it, w0 of its params.
  std::vector<bool> upper(n, false);
  for (std::size_t u = n / 2; u < n; ++u) upper[u] = true;
  const MemoryBreakdown h = mem.probe(none, ImportanceMetric::loss_drop, {upper, {}}, true);
  const auto upper_params = param_mask(mem.units(), upper, m.params().size());
  CHECK(h.activations == m.graph->plan_arena_bytes(upper_params) + m.graph->own_bytes());
  CHECK(h.activations < p.activations);
  std::int64_t copies = 0, upper_bytes = 0, upper_largest = 0;
  for (std::size_t u = 0; u < n; ++u) {
    if (!upper[u]) copies += mem.copy_bytes(u);
    for (int k : mem.units()[u].params)
      if (upper[u]) {
        const std::int64_t bytes = m.params()[std::size_t(k)].size() * std::int64_t(sizeof(float));
        upper_bytes += bytes;
        upper_largest = std::max(upper_largest, bytes);
      }
  }
  CHECK(h.weight_copies == copies);
  CHECK(h.probe == upper_bytes + upper_largest + upper_largest * std::int64_t(opt.slot_count()));
  CHECK(mem.probe(none, ImportanceMetric::loss_drop, {upper, {}}, false).weight_copies == 0);
}

TEST_CASE("the DP's additive model is exact for one unit and never above the exact figure's other parts") {
  Context ctx(2);
  Model m = build_model("mobilenetv2", ctx, {.num_classes = 10, .input_size = 32, .batch = 2});
  TrainingMemory mem(m, 1);
  const std::size_t n = mem.size();
  const std::vector<bool> none(n, false);
  const auto add = mem.additive(none, none, false);
  for (std::size_t u = 0; u < n; ++u) {
    std::vector<bool> one(n, false);
    one[u] = true;
    const auto exact = mem.training(one, none, one, false).total();
    CAPTURE(u);
    // The streamed buffer is the one part the additive form leaves to the exact check.
    CHECK(add.fixed + add.stretch[u] + add.unit[u] + double(m.params().stream_bytes(mem.units()[u].node)) ==
          double(exact));
  }
  // With copies kept, a trained unit's cost is its slots less its copy, never below zero.
  const auto kept = mem.additive(none, none, true);
  for (std::size_t u = 0; u < n; ++u) {
    CHECK(kept.unit[u] >= 0);
    CHECK(kept.unit[u] == std::max(0.0, double(mem.slot_bytes(u) - mem.copy_bytes(u))));
  }
  // Units that already have slots cost nothing more.
  const std::vector<bool> all(n, true);
  for (double x : mem.additive(all, none, false).unit) CHECK(x == 0);
}

#if !defined(__SANITIZE_ADDRESS__)
TEST_CASE("the predicted peak is the process's measured peak resident memory, within 10%") {
  SGDW opt;
  Trained t("resnet50", 96, opt, 2, [](std::size_t n) { return std::vector<bool>(n, true); });
  Model& m = t.m;
  TrainingMemory mem(m, opt.slot_count());
  const std::vector<bool> all(mem.size(), true);
  const double predicted = double(mem.training(all, all, all, true).total());
  const double measured = double(peak_resident_bytes());
  MESSAGE("predicted ", predicted / kMiB, " MiB, measured ", measured / kMiB, " MiB");
  CHECK(predicted == doctest::Approx(measured).epsilon(0.10));
  // The model's own buffers are most of it: a prediction of the base alone is far off.
  CHECK(double(m.base_bytes) < 0.5 * measured);
}
#endif

}  // namespace method_training_memory_test
