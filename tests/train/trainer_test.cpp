#include "elastic/train/trainer.hpp"

#include <cstring>
#include <filesystem>

#include <unistd.h>

#include <doctest/doctest.h>

#include "elastic/models/small_cnn.hpp"
#include "elastic/train/checkpoint.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace train_trainer_test {

using namespace elastic;

namespace {
// 96 random 28x28 images whose label is the quadrant holding a bright square.
data::ImageSet quadrant_set(int n, std::uint64_t seed) {
  data::ImageSet s;
  s.height = s.width = 28;
  Rng rng(seed);
  for (int i = 0; i < n; ++i) {
    const int label = static_cast<int>(rng.below(4));
    s.labels.push_back(label);
    for (int y = 0; y < 28; ++y)
      for (int x = 0; x < 28; ++x) {
        const bool in = (y / 14) * 2 + (x / 14) == label && y % 14 > 3 && y % 14 < 11 && x % 14 > 3 && x % 14 < 11;
        s.pixels.push_back(static_cast<std::uint8_t>(in ? 200 + rng.below(55) : rng.below(60)));
      }
  }
  return s;
}

struct Setup {
  Context ctx{2};
  Model model;
  data::ImageSet set = quadrant_set(96, 1);
  ImageBatcher batches{set, 0.2f, 0.3f, 5};
  explicit Setup(const SmallCnnOptions& o = {.batch = 8, .num_classes = 4, .width1 = 8, .width2 = 16, .seed = 3})
      : model(small_cnn(ctx, o)) {
    model.set_batch_stats(false);
  }
  Profile profile() {
    batches.start_epoch(0, false);
    batches.load(model, 0);
    return TimingProfiler<>({.warmup = 2, .repeats = 5})
        .run(model, ctx.threads(), std::vector<bool>(model.params().size(), true));
  }
  // The measured units with round times, so that the budget, not the machine's load,
  // decides what fits: forward 10 ms with every unit frozen, and per unit `fw` ms
  // more forward when trained, `dw` for its weight gradient and update, `dy` for its stretch.
  Profile fixed_profile(double fw, double dw, double dy) {
    Profile p = profile();
    p.t_fwd_frozen = 10;
    std::fill(p.t_fw.begin(), p.t_fw.end(), fw);
    std::fill(p.t_dw.begin(), p.t_dw.end(), dw);
    std::fill(p.t_dy.begin(), p.t_dy.end(), dy);
    p.t_fwd = 10 + fw * double(p.t_fw.size());
    return p;
  }
};
}  // namespace
}  // namespace train_trainer_test

// oneDNN's count of primitives in its cache: exported by libdnnl for its own tests, not in its headers.
namespace dnnl::impl {
dnnl_status_t get_primitive_cache_size(int* size);
}

namespace train_trainer_test {
namespace {
int cached_primitives() {
  int n = -1;
  REQUIRE(dnnl::impl::get_primitive_cache_size(&n) == dnnl_success);
  return n;
}
}  // namespace

// A seed here would be one nobody reads (the trainer draws nothing at random).
template <class O>
concept has_seed = requires(O o) {
  o.seed;
};
static_assert(!has_seed<TrainerOptions>, "TrainerOptions has no seed: seeds live where numbers are drawn");

TEST_CASE("TrainerOptions::check refuses what the Trainer would, without a model") {
  const auto refuses = [](TrainerOptions o, const char* flag) {
    CHECK_THROWS_WITH_AS(o.check(), doctest::Contains(flag), UsageError);
  };
  refuses({.rho = 0}, "--rho");
  refuses({.interval = 0}, "--interval");
  refuses({.optimizer = "rmsprop"}, "--optimizer 'rmsprop'");
  refuses({.type = TrainType::full_training, .deadline_s = 60.0}, "--deadline needs an elastic");
  refuses({.memory_budget_mib = 0.0}, "--memory_budget must be a positive size");
  refuses({.type = TrainType::full_training, .memory_budget_mib = 500.0}, "--memory_budget needs an elastic");
  TrainerOptions off{.deadline_s = 60.0};
  off.control.correct = false;
  refuses(off, "--time_control on");
  CHECK_NOTHROW(TrainerOptions{.deadline_s = 60.0}.check());
}

TEST_CASE("static training types select the head, the norms and biases, or everything") {
  Setup s;
  const auto& ps = s.model.params();
  const auto selected = [&](TrainType t) {
    Trainer tr(s.model, {.type = t, .num_epochs = 1}, 12);
    std::vector<std::string> names;
    for (std::size_t k = 0; k < ps.size(); ++k)
      if (tr.mask()[k]) names.push_back(ps[k].name);
    return names;
  };
  CHECK(selected(TrainType::full_training).size() == ps.size());
  CHECK(selected(TrainType::traditional_tl_training) == std::vector<std::string>{"fc.weight", "fc.bias"});
  const auto bn = selected(TrainType::bn_plus_bias_training);
  CHECK(bn.size() == 2 * 4 + 2);  // four batch norms' gamma and beta, and the head
  for (const auto& n : bn) CHECK((n.find(".bn.") != std::string::npos || n.starts_with("fc.")));
  CHECK_THROWS_WITH_AS(Trainer(s.model, {.type = TrainType::elastic_training}, 12), doctest::Contains("profile"),
                       Error);
  CHECK_THROWS_WITH_AS(parse_train_type("elastic"), doctest::Contains("--train_type 'elastic'"), UsageError);
  CHECK_THROWS_WITH_AS(Trainer(s.model, {.type = TrainType::full_training, .rho = 1.5}, 12), doctest::Contains("--rho"),
                       UsageError);
}

TEST_CASE("frozen params stay bit-identical while the selected ones train") {
  Setup s;
  Trainer tr(s.model, {.type = TrainType::traditional_tl_training, .num_epochs = 1, .learning_rate = 0.05f}, 12);
  const auto& ps = s.model.params();
  std::vector<std::vector<float>> before;
  for (const auto& p : ps.params()) before.emplace_back(p.values().begin(), p.values().end());
  tr.train_epoch(s.batches, 0);
  for (std::size_t k = 0; k < ps.size(); ++k) {
    CAPTURE(ps[k].name);
    const bool same = std::equal(before[k].begin(), before[k].end(), ps[k].values().begin());
    CHECK(same == !tr.mask()[k]);
  }
}

TEST_CASE("elastic training selects within the budget every interval and logs each selection") {
  Setup s;
  const Profile p = s.fixed_profile(0, 1, 1);
  Trainer tr(s.model,
             {.type = TrainType::elastic_training, .num_epochs = 3, .interval = 2, .rho = 0.75, .learning_rate = 0.05f},
             12, p);
  int logged = 0;
  std::vector<std::string> lines;
  tr.on_selection = [&](const SelectionRecord&) { ++logged; };
  tr.log = [&](const std::string& line) { lines.push_back(line); };
  Metrics first, last;
  double train_ms = 0;
  for (int e = 0; e < 3; ++e) {
    const auto rec = tr.train_epoch(s.batches, e);
    CHECK(rec.steps == 12);
    train_ms += rec.train_ms;
    CHECK(tr.train_ms() == doctest::Approx(train_ms));  // the run's training time is the sum of its epochs
    (e == 0 ? first : last) = rec.train;
  }
  REQUIRE(tr.selections().size() == 2);  // epochs 0 and 2
  CHECK(logged == 2);
  for (const auto& sel : tr.selections()) {
    CHECK(sel.predicted_share <= 0.75 + 1e-9);
    CHECK_FALSE(sel.selected_units.empty());
    CHECK(sel.importance > 0);
  }
  CHECK(tr.selections()[1].epoch == 2);
  // Under a tight budget not everything fits.
  CHECK(std::count(tr.mask().begin(), tr.mask().end(), false) > 0);
  CHECK(last.loss() < first.loss());
  REQUIRE(lines.size() == 5);  // 2 selections + 3 epochs
  CHECK(lines[0].find("selection at epoch 1") != std::string::npos);
  CHECK(lines[0].find("mask ") != std::string::npos);
  CHECK(lines[1].find("epoch 1: 12 steps") != std::string::npos);
  // A profile measured for another setting is refused.
  Profile other = p;
  other.key.batch = 16;
  CHECK_THROWS_WITH_AS(Trainer(s.model, {.type = TrainType::elastic_training}, 12, other),
                       doctest::Contains("batch size 16"), Error);
}

TEST_CASE("a probe where no unit scores above 0 keeps the previous scores; a first one scores by gradient") {
  // Weight magnitude as the metric: with every param zero, every unit scores 0.
  const auto zero_params = [](Model& m) {
    for (float& v : m.params().value_arena()) v = 0.0f;
  };
  const auto said = [](const std::vector<std::string>& lines, std::string_view what) {
    return std::count_if(lines.begin(), lines.end(), [&](const std::string& l) { return l.find(what) != l.npos; });
  };
  const TrainerOptions o{.type = TrainType::elastic_training_weight_magnitude,
                         .num_epochs = 2,
                         .interval = 1,
                         .rho = 0.75,
                         .learning_rate = 0.05f,
                         .control = {.correct = false}};
  {
    Setup s;
    const Profile p = s.fixed_profile(0, 1, 1);
    zero_params(s.model);
    Trainer tr(s.model, o, 12, p);
    std::vector<std::string> lines;
    tr.log = [&](const std::string& line) { lines.push_back(line); };
    tr.train_epoch(s.batches, 0);
    REQUIRE(tr.selections().size() == 1);
    // Only the head's gradient is nonzero with every param zero: it is what trains.
    CHECK(tr.selections()[0].importance > 0);
    CHECK_FALSE(tr.selections()[0].selected_units.empty());
    CHECK(said(lines, "scored by gradient magnitude instead") == 1);
    CHECK(tr.selections()[0].scores == "grad_magnitude");
  }
  {
    Setup s;
    const Profile p = s.fixed_profile(0, 1, 1);
    Trainer tr(s.model, o, 12, p);
    std::vector<std::string> lines;
    tr.log = [&](const std::string& line) { lines.push_back(line); };
    tr.train_epoch(s.batches, 0);
    REQUIRE(tr.selections().size() == 1);
    const SelectionRecord first = tr.selections()[0];
    REQUIRE(first.importance > 0);
    CHECK(said(lines, "no unit scores above 0") == 0);
    CHECK(first.scores == "measured");
    zero_params(s.model);
    tr.train_epoch(s.batches, 1);
    REQUIRE(tr.selections().size() == 2);
    const SelectionRecord& second = tr.selections()[1];
    CHECK(said(lines, "the previous probe's scores stay in force") == 1);
    CHECK(second.unit_importance == first.unit_importance);
    CHECK(second.scores == "previous");
    CHECK(second.unit_mask == first.unit_mask);  // the same scores and time model: the same selection
    CHECK(second.importance == first.importance);
  }
}

TEST_CASE("a rho below the cheapest useful selection is refused, naming the smallest rho") {
  Setup s;
  // Injected times: the frozen forward alone is 10 of a 55 ms full step, so no selection fits
  // rho 0.05 on any machine (measured times put the cheapest unit near 0.05 on a loaded one).
  const Profile p = s.fixed_profile(1, 2, 2);
  Trainer tr(s.model, {.type = TrainType::elastic_training, .num_epochs = 1, .rho = 0.05}, 12, p);
  CHECK_THROWS_WITH_AS(tr.train_epoch(s.batches, 0), doctest::Contains("needs rho >="), UsageError);
  Profile fewer = p;
  fewer.units.pop_back();
  CHECK_THROWS_AS(Trainer(s.model, {.type = TrainType::elastic_training}, 12, fewer), Error);
}

namespace {
// The probe scoring units f and above of n, spilled to the temporary directory or not.
ProbeScope scope_from(std::size_t n, std::size_t f, bool spill) {
  ProbeScope scope{std::vector<bool>(n, false),
                   spill ? std::filesystem::temp_directory_path() : std::filesystem::path()};
  for (std::size_t u = f; u < n; ++u) scope.units[u] = true;
  return scope;
}
}  // namespace

TEST_CASE("a memory budget: each selection's exact peak fits, the DP finds the best that fits, too small is refused") {
  // Wider layers on a batch of 2, trained with Adam: weights and slots weigh against activations.
  const SmallCnnOptions wide{.batch = 2, .num_classes = 4, .width1 = 32, .width2 = 64, .seed = 3};
  Setup s(wide);
  Profile p = s.fixed_profile(0, 1, 1);  // rho 1 holds every unit: memory alone decides
  p.key.optimizer = "adam";
  TrainingMemory mem(s.model, 2);  // Adam: two slots per param
  const std::size_t n = mem.size();
  const std::vector<bool> none(n, false);
  // Room for the probe of every unit with the weights it moves spilled to a file (in memory they
  // do not fit), not for training every unit: a budget that binds.
  const double budget = double(mem.probe(none, ImportanceMetric::loss_drop, scope_from(n, 0, true)).total());
  CHECK(double(mem.probe(none, ImportanceMetric::loss_drop, scope_from(n, 0, false)).total()) > budget);
  CHECK(double(mem.training(std::vector<bool>(n, true), none, none, false).total()) > budget);
  // The peak the trainer must keep, with copies kept or given up, whichever is smaller: training's,
  // or the smallest probe's after it (the last unit alone, spilled, no copies).
  const auto peak = [&](const std::vector<bool>& m) {
    std::int64_t best = std::numeric_limits<std::int64_t>::max();
    for (bool keep : {true, false})
      best = std::min(best,
                      std::max(mem.training(m, none, none, keep).total(),
                               mem.probe(m, ImportanceMetric::loss_drop, scope_from(n, n - 1, true), false).total()));
    return best;
  };

  TrainerOptions o{
      .type = TrainType::elastic_training, .num_epochs = 1, .rho = 1.0, .optimizer = "adam", .learning_rate = 0.05f};
  o.memory_budget_mib = budget / kMiB;
  o.memory_margin = 0;  // the model's figures exactly (the margin is checked below)
  o.control.correct = false;
  Trainer tr(s.model, o, 12, p);
  std::vector<std::string> lines;
  tr.log = [&](const std::string& line) { lines.push_back(line); };
  tr.train_epoch(s.batches, 0);
  REQUIRE(tr.selections().size() == 1);
  const SelectionRecord& sel = tr.selections()[0];
  CHECK(sel.memory_mib * kMiB <= budget);
  CHECK(double(peak(sel.unit_mask)) <= budget);  // recomputed here from the model
  // The DP solved between steps within the budget too: its tables at full resolution (1000)
  // would not fit in the room the plan left here, so it solved at a coarser one.
  CHECK(sel.solve_mib * kMiB <= budget);
  CHECK(sel.memory_resolution >= 1);
  CHECK(sel.memory_resolution < o.memory_resolution);
  CHECK(std::any_of(lines.begin(), lines.end(), [&](const std::string& l) {
    return l.find(fmt::format("of {:.1f} MiB", budget / kMiB)) != std::string::npos;
  }));
  // The probe scored every unit, spilled; its record carries the interval's importance.
  const auto& importance = tr.state().importance;
  CHECK(sel.unit_importance == importance);
  CHECK(lines[0].find(fmt::format("scores units 1 to {} of {}, the weights it moves spilled to '{}'", n, n,
                                  std::filesystem::temp_directory_path().string())) != std::string::npos);
  // Against every mask (2^9): none that fits has more importance, and some that do not fit have.
  double best = 0, useful = 0;
  for (std::uint32_t bits = 1; bits < (1u << n); ++bits) {
    std::vector<bool> m(n);
    double value = 0;
    for (std::size_t u = 0; u < n; ++u) {
      m[u] = (bits >> u) & 1;
      if (m[u]) value += importance[u];
    }
    if (value > best && double(peak(m)) <= budget) best = value;
    useful = std::max(useful, value);
  }
  MESSAGE("selected importance ", sel.importance, ", best that fits ", best, ", best ", useful);
  CHECK(best < useful);  // the budget binds
  CHECK(sel.importance >= 0.95 * best);
  CHECK(sel.importance <= best + 1e-12);

  // A budget below the smallest probe is refused before it runs, naming the smallest feasible one.
  {
    Setup s2(wide);
    TrainingMemory mem2(s2.model, 2);  // its own base: the process has grown since the first model
    TrainerOptions tight = o;
    tight.memory_budget_mib =
        double(mem2.probe(none, ImportanceMetric::loss_drop, scope_from(n, n - 1, true), false).total()) / kMiB * 0.99;
    Trainer refused(s2.model, tight, 12, p);
    refused.log = nullptr;
    CHECK_THROWS_WITH_AS(refused.train_epoch(s2.batches, 0), doctest::Contains("the smallest feasible budget is"),
                         UsageError);
    CHECK(refused.selections().empty());
  }
  // Room for the probe of the upper half only (spilled, copies kept): it scores the widest scope
  // that fits, the units below it score 0 and are not selected.
  {
    Setup s3(wide);
    TrainingMemory mem3(s3.model, 2);
    TrainerOptions narrow = o;
    const std::size_t half = n / 2;
    narrow.memory_budget_mib =
        double(mem3.probe(none, ImportanceMetric::loss_drop, scope_from(n, half, true), true).total()) / kMiB;
    Trainer scoped(s3.model, narrow, 12, p);
    std::vector<std::string> scoped_lines;
    scoped.log = [&](const std::string& line) { scoped_lines.push_back(line); };
    scoped.train_epoch(s3.batches, 0);
    const auto& imp = scoped.state().importance;
    std::size_t g = 0;
    while (g < n && imp[g] == 0) ++g;
    CAPTURE(g);
    CHECK(g >= 1);
    CHECK(g <= half);
    for (bool spill : {false, true})
      for (bool keep : {true, false})
        CHECK(double(mem3.probe(none, ImportanceMetric::loss_drop, scope_from(n, g - 1, spill), keep).total()) >
              *narrow.memory_budget_mib * kMiB);
    for (std::size_t u = 0; u < g; ++u) CHECK(!scoped.selections()[0].unit_mask[u]);
    CHECK(scoped_lines[0].find(fmt::format("scores units {} to {} of {}", g + 1, n, n)) != std::string::npos);
  }
  // A margin: the plans fill (1 - margin) of the budget. The budget holds the probe of every
  // unit (spilled); the margin takes half of what that probe needs beyond the smallest one, so
  // the smallest fits and the widest does not (in bytes, whatever the process's base is).
  {
    Setup s4(wide);
    TrainingMemory mem4(s4.model, 2);
    const double full = double(mem4.probe(none, ImportanceMetric::loss_drop, scope_from(n, 0, true)).total());
    const double least =
        double(mem4.probe(none, ImportanceMetric::loss_drop, scope_from(n, n - 1, true), false).total());
    TrainerOptions margin = o;
    margin.memory_margin = (full - least) / 2 / full;
    margin.memory_budget_mib = full / kMiB;
    Trainer held(s4.model, margin, 12, p);
    held.log = nullptr;
    held.train_epoch(s4.batches, 0);
    CHECK(held.selections()[0].memory_mib * kMiB <= (1 - margin.memory_margin) * full);
    CHECK(held.importance().front() == 0);  // the probe of every unit did not fit
    margin.memory_margin = 0.5;
    CHECK_THROWS_WITH_AS(margin.check(), doctest::Contains("the memory margin must be in [0, 0.5)"), UsageError);
  }
}

TEST_CASE("under a memory budget the kernels of the thread count time control may move to are made at the start") {
  // Shapes of this test's own, so that no other test's primitives are in oneDNN's cache.
  Setup s({.batch = 6, .num_classes = 4, .width1 = 12, .width2 = 20, .seed = 9});
  const Profile p = s.fixed_profile(0, 1, 1);
  TrainerOptions o{.type = TrainType::elastic_training, .num_epochs = 1, .rho = 0.6};
  o.memory_budget_mib = 4096;
  o.control.adapt_threads = false;  // nothing moves the kernels: none made
  const int before = cached_primitives();
  { Trainer fixed(s.model, o, 12, p); }
  CHECK(cached_primitives() == before);
  o.control.adapt_threads = true;
  { Trainer adapting(s.model, o, 12, p); }
  const int both = cached_primitives();
  CHECK(both > before);  // the one-thread kernels, made and kept by the cache
  CHECK(s.model.graph->context().threads() == 2);
  s.model.graph->set_threads(1);  // what a switch does later: every kernel comes from the cache
  s.model.graph->set_threads(2);
  CHECK(cached_primitives() == both);
}

TEST_CASE("prunetrain adds an L1 pull on kernel weights and nothing else") {
  float kernel_step[2], bias_step[2];
  for (int i = 0; i < 2; ++i) {
    Setup s;
    const auto type = i == 0 ? TrainType::full_training : TrainType::prunetrain;
    Trainer tr(s.model, {.type = type, .num_epochs = 1, .learning_rate = 0.1f, .weight_decay = 0.0f, .l1 = 0.01f}, 1);
    const auto& ps = s.model.params();
    const float w0 = ps[0].value[5], b0 = ps[ps.size() - 1].value[0];
    data::ImageSet one = s.set;
    one.labels.resize(8);
    one.pixels.resize(8 * 28 * 28);
    ImageBatcher b(one, 0.2f, 0.3f, 5);
    tr.train_epoch(b, 0);
    kernel_step[i] = ps[0].value[5] - w0;
    bias_step[i] = ps[ps.size() - 1].value[0] - b0;
    if (i == 1) {
      // First SGDW step: v = -lr * (g + l1 * sign(w)); the difference is -lr * l1 * sign(w0),
      // to float's rounding of w0 + v (a relative tolerance: scale(0), not doctest's absolute 1).
      CHECK(kernel_step[1] - kernel_step[0] ==
            doctest::Approx(-0.1f * 0.01f * (w0 > 0 ? 1 : -1)).epsilon(1e-3).scale(0));
      CHECK(bias_step[1] == bias_step[0]);  // the same arithmetic in both runs
    }
  }
}

TEST_CASE("a non-finite loss stops training with the step number, before any update") {
  Setup s;
  Trainer tr(s.model, {.type = TrainType::full_training, .num_epochs = 2, .learning_rate = 0.05f}, 12);
  tr.log = nullptr;
  tr.train_epoch(s.batches, 0);
  Param& head = s.model.params()[s.model.params().size() - 2];  // the last linear layer's weight
  head.value[0] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> before;
  for (const auto& p : s.model.params().params()) before.insert(before.end(), p.values().begin(), p.values().end());
  CHECK_THROWS_WITH_AS(tr.train_epoch(s.batches, 1), doctest::Contains("the training loss is nan at step 13 (epoch 2)"),
                       NonFiniteLoss);
  std::vector<float> after;
  for (const auto& p : s.model.params().params()) after.insert(after.end(), p.values().begin(), p.values().end());
  REQUIRE(after.size() == before.size());
  CHECK(std::memcmp(after.data(), before.data(), after.size() * sizeof(float)) == 0);  // every bit, the NaN's too
  CHECK(tr.step() == 12);
}

namespace {
// A batch source whose every load takes 10 ms of a fake clock.
struct TimedBatches {
  ImageBatcher& b;
  double& now;
  void start_epoch(std::uint64_t e, bool shuffle) { b.start_epoch(e, shuffle); }
  std::int64_t batches(std::int64_t batch, bool drop_last) const { return b.batches(batch, drop_last); }
  std::int64_t load(Model& m, std::int64_t i) {
    now += 10;
    return b.load(m, i);
  }
};
}  // namespace

TEST_CASE("the importance probe and the DP count as training time, and the selection records their duration") {
  Setup s;
  const Profile p = s.fixed_profile(0, 1, 1);
  double now = 0;
  TimedBatches source{s.batches, now};
  Trainer tr(s.model, {.type = TrainType::elastic_training, .num_epochs = 2, .interval = 2, .rho = 0.75}, 12, p);
  tr.clock = [&] { return now; };
  std::vector<std::string> lines;
  tr.log = [&](const std::string& line) { lines.push_back(line); };
  // Epoch 0 selects: the probe loads batch 0 (10 ms), then 12 steps load 12 batches.
  CHECK(tr.train_epoch(source, 0).train_ms == 130);
  REQUIRE(tr.selections().size() == 1);
  CHECK(tr.selections()[0].selection_ms == 10);
  CHECK(lines[0].find("selected in 10 ms (the DP 0.0 ms)") != std::string::npos);  // the probe took the 10
  CHECK(tr.train_epoch(source, 1).train_ms == 120);                                // no selection in epoch 1
}

TEST_CASE("SGDW's learning rate follows the cosine, Adam's stays constant, as in the reference") {
  Setup s;
  Trainer sgd(s.model, {.type = TrainType::full_training, .num_epochs = 1, .optimizer = "sgd", .learning_rate = 0.05f},
              12);
  sgd.log = nullptr;
  CHECK(sgd.learning_rate() == 0.05f);
  sgd.train_epoch(s.batches, 0);
  CHECK(sgd.learning_rate() == 0.0f);  // the end of the cosine
  Setup s2;
  Trainer adam(s2.model,
               {.type = TrainType::full_training, .num_epochs = 1, .optimizer = "adam", .learning_rate = 0.01f}, 12);
  adam.log = nullptr;
  adam.train_epoch(s2.batches, 0);
  CHECK(adam.learning_rate() == 0.01f);
  // Adam has no decay unless one is given; given, it is AdamW: the same run ends with other weights.
  Setup s3;
  Trainer adamw(s3.model,
                {.type = TrainType::full_training,
                 .num_epochs = 1,
                 .optimizer = "adam",
                 .learning_rate = 0.01f,
                 .weight_decay = 1.0f},
                12);
  adamw.log = nullptr;
  adamw.train_epoch(s3.batches, 0);
  const float* w_adam = s2.model.params()[0].value;
  const float* w_adamw = s3.model.params()[0].value;
  // AdamW shrinks every weight by 1% a step on top of Adam's move: after 12 steps the first
  // conv's weights are smaller in total magnitude.
  double sum_adam = 0, sum_adamw = 0;
  for (std::int64_t i = 0; i < s2.model.params()[0].size(); ++i) {
    sum_adam += std::abs(w_adam[i]);
    sum_adamw += std::abs(w_adamw[i]);
  }
  CHECK(sum_adamw < 0.95 * sum_adam);
}

namespace {
// A fake machine for the trainer's clock. The trainer loads each step's batch,
// then reads its clock four times: before the forward, after it, after the
// backward (with updates) and after the step's bookkeeping. A load arms those
// four reads; the second advances the time by the installed plan's forward on
// this machine, the third by its backward: the profile's times scaled by
// fwd_x and bwd_x, and by one_thread_x while the context runs one thread.
// (A probe's load arms them too, so a probe costs one step.)
struct FakeMachine {
  const Profile& p;
  std::vector<Unit> units;
  const Trainer* trainer = nullptr;
  double fwd_x = 1, bwd_x = 1;
  const Context* ctx = nullptr;
  double one_thread_x = 1;
  double now = 0;
  int phase = 4;

  std::vector<bool> unit_mask(const std::vector<bool>& param_mask) const {
    std::vector<bool> m(units.size());
    for (std::size_t u = 0; u < units.size(); ++u) m[u] = param_mask[std::size_t(units[u].params.front())];
    return m;
  }
  // Runs `tr` on this machine: the trainer's clock reads it.
  void drive(Trainer& tr) {
    trainer = &tr;
    tr.clock = [this] { return read(); };
  }
  double step_ms(const std::vector<bool>& um) const { return fwd_x * p.t_forward(um) + bwd_x * p.t_bwd(um); }
  double full_ms() const { return step_ms(std::vector<bool>(units.size(), true)); }
  double read() {
    if (phase < 4) {
      ++phase;
      const auto um = unit_mask(trainer->mask());
      const double x = ctx && ctx->threads() == 1 ? one_thread_x : 1;
      if (phase == 2) now += x * fwd_x * p.t_forward(um);
      if (phase == 3) now += x * bwd_x * p.t_bwd(um);
    }
    return now;
  }
};

struct FakeBatches {
  ImageBatcher& b;
  FakeMachine& machine;
  std::function<void(std::uint64_t)> before_step;  // e.g. slow the machine down from some step on
  void start_epoch(std::uint64_t e, bool shuffle) { b.start_epoch(e, shuffle); }
  std::int64_t batches(std::int64_t batch, bool drop_last) const { return b.batches(batch, drop_last); }
  std::int64_t load(Model& m, std::int64_t i) {
    if (before_step) before_step(machine.trainer->step());
    machine.phase = 0;
    return b.load(m, i);
  }
};

TimeControlOptions quick_control() {
  return {.settle_steps = 2, .window_steps = 4, .tolerance = 0.03, .max_resolves = 3};
}
}  // namespace

TEST_CASE("measured steps correct the time model, and the re-solved selection holds rho on the machine it runs on") {
  Setup s;
  const Profile p = s.fixed_profile(0.5, 2, 1);
  // This machine runs forwards twice as slow as profiled and backwards at 0.6x.
  FakeMachine machine{p, selection_units(*s.model.graph)};
  machine.fwd_x = 2.0;
  machine.bwd_x = 0.6;
  FakeBatches source{s.batches, machine};
  const double rho = 0.75;
  Trainer tr(s.model,
             {.type = TrainType::elastic_training,
              .num_epochs = 2,
              .interval = 2,
              .rho = rho,
              .learning_rate = 0.05f,
              .control = quick_control()},
             12, p);
  machine.drive(tr);
  std::vector<SelectionRecord> logged;
  tr.on_selection = [&](const SelectionRecord& r) { logged.push_back(r); };
  std::vector<std::string> lines;
  tr.log = [&](const std::string& line) { lines.push_back(line); };
  const auto e0 = tr.train_epoch(source, 0);
  tr.train_epoch(source, 1);
  const auto& sels = tr.selections();
  REQUIRE(sels.size() >= 2);
  CHECK(sels[0].reason == "probe");
  CHECK(sels[1].reason == "correction");
  CHECK(sels[1].step == 2 + 4);  // after the settling steps and one window
  // The profile's prediction of the first selection was off on this machine; the corrected model's is exact.
  const double true0 = machine.step_ms(sels[0].unit_mask) / machine.full_ms();
  CHECK(std::abs(true0 - sels[0].predicted_share) > 0.03);
  CHECK(sels[0].measured_share == doctest::Approx(true0));
  const auto& last = sels.back();
  CHECK(last.predicted_share <= rho + 1e-9);
  CHECK(last.measured_share == doctest::Approx(machine.step_ms(last.unit_mask) / machine.full_ms()));
  CHECK(last.measured_share == doctest::Approx(last.predicted_share));
  CHECK(last.full_step_ms == doctest::Approx(machine.full_ms()));
  CHECK(tr.controller()->state().fwd_scale == doctest::Approx(2.0));
  CHECK(tr.controller()->state().bwd_scale == doctest::Approx(0.6));
  // Every selection is logged once, with its measurement, when replaced or when its interval ends.
  REQUIRE(logged.size() == sels.size());
  CHECK(logged.back().measured_share == doctest::Approx(last.measured_share));
  CHECK(e0.measured_share > 0);
  CHECK(std::any_of(lines.begin(), lines.end(), [](const std::string& l) {
    return l.find("time model corrected at step 6") != std::string::npos;
  }));
  CHECK(std::any_of(lines.begin(), lines.end(),
                    [](const std::string& l) { return l.find("measured share") != std::string::npos; }));
}

namespace {
// Trains `epochs` epochs of the small CNN on the fake machine, resuming from a
// checkpoint file after epoch `resume_after` (-1: never), or after step
// `stop_at` (a stop request between two steps of an epoch; -1: never), as a new
// process would; returns the final weights, the selections and the epoch records.
struct FakeRun {
  std::vector<float> weights;
  std::vector<SelectionRecord> selections;
  std::vector<EpochRecord> epochs;
};
FakeRun fake_run(int epochs, int resume_after, std::int64_t stop_at = -1) {
  const auto path = std::filesystem::temp_directory_path() / fmt::format("elastic_trainer_{}.safetensors", ::getpid());
  std::optional<Setup> s(std::in_place);
  const Profile p = s->fixed_profile(0.5, 2, 1);
  const TrainerOptions o{.type = TrainType::elastic_training,
                         .num_epochs = epochs,
                         .interval = 2,
                         .rho = 0.7,
                         .learning_rate = 0.05f,
                         .control = quick_control()};
  FakeMachine machine{p, selection_units(*s->model.graph)};
  machine.fwd_x = 1.7;
  machine.bwd_x = 0.8;
  auto tr = std::make_unique<Trainer>(s->model, o, 12, p);
  const auto restart = [&] {  // a new process: fresh model and trainer from the checkpoint alone
    save_checkpoint(path, s->model.params(), tr->state(), nlohmann::json::object());
    tr.reset();
    s.emplace();
    const Checkpoint c = load_checkpoint(path, s->model.params());
    tr = std::make_unique<Trainer>(s->model, o, 12, p);
    tr->restore(c.trainer);
    std::filesystem::remove(path);
  };
  FakeRun out;
  for (int e = 0; e < epochs; ++e) {
    machine.drive(*tr);
    tr->log = nullptr;
    tr->stop = [&] { return std::int64_t(tr->step()) == stop_at; };
    FakeBatches source{s->batches, machine};
    EpochRecord rec = tr->train_epoch(source, e);
    if (!rec.complete) {
      CHECK(rec.steps == stop_at % 12);
      restart();
      machine.drive(*tr);
      tr->log = nullptr;
      FakeBatches resumed{s->batches, machine};
      rec = tr->train_epoch(resumed, e);
      CHECK(rec.complete);
    }
    out.epochs.push_back(rec);
    if (e == resume_after) restart();
  }
  const auto v = s->model.params().value_arena();
  out.weights.assign(v.begin(), v.end());
  out.selections = tr->selections();
  return out;
}
}  // namespace

TEST_CASE(
    "with the same machine times, reruns and runs resumed from a checkpoint, mid-interval or mid-epoch, are "
    "identical") {
  const FakeRun a = fake_run(3, -1), b = fake_run(3, -1);
  const FakeRun c = fake_run(3, 0);       // the checkpoint falls inside the first interval
  const FakeRun d = fake_run(3, -1, 17);  // stopped after step 17, 5 steps into epoch 2, mid-window
  REQUIRE(a.selections.size() >= 3);
  CHECK(a.weights == b.weights);
  for (const FakeRun* r : {&c, &d}) {
    CHECK(a.weights == r->weights);
    REQUIRE(a.selections.size() == r->selections.size());
    for (std::size_t i = 0; i < a.selections.size(); ++i) {
      CAPTURE(i);
      CHECK(a.selections[i].unit_mask == r->selections[i].unit_mask);
      CHECK(a.selections[i].reason == r->selections[i].reason);
      CHECK(a.selections[i].step == r->selections[i].step);
      CHECK(a.selections[i].measured_share == r->selections[i].measured_share);
    }
    REQUIRE(r->epochs.size() == 3);
    for (std::size_t e = 0; e < 3; ++e) {  // epoch records too, the interrupted one included
      CAPTURE(e);
      CHECK(r->epochs[e].steps == 12);
      CHECK(r->epochs[e].train.loss_sum == a.epochs[e].train.loss_sum);
      CHECK(r->epochs[e].train.correct == a.epochs[e].train.correct);
      CHECK(r->epochs[e].train_ms == doctest::Approx(a.epochs[e].train_ms));
      CHECK(r->epochs[e].measured_share == a.epochs[e].measured_share);
    }
  }
}

TEST_CASE("a busy core: the kernels move to one thread while that is faster and back when the core frees up") {
  Setup s;
  const Profile p = s.fixed_profile(0.5, 2, 1);
  REQUIRE(p.key.threads == 2);
  FakeMachine machine{p, selection_units(*s.model.graph)};
  machine.ctx = &s.ctx;
  // Steps 40-99: another process takes a core; two threads then run 3x slower
  // and one thread 1.6x slower than two on an idle machine. Outside, one thread is 1.6x slower.
  FakeBatches source{s.batches, machine};
  const auto busy = [](std::uint64_t step) { return step >= 40 && step < 100; };
  source.before_step = [&](std::uint64_t step) {
    machine.fwd_x = machine.bwd_x = busy(step) ? 3.0 : 1.0;
    machine.one_thread_x = busy(step) ? 1.6 / 3.0 : 1.6;
  };
  TimeControlOptions control = quick_control();
  control.retry_windows = 3;
  const TrainerOptions o{.type = TrainType::elastic_training,
                         .num_epochs = 12,
                         .interval = 12,
                         .rho = 0.7,
                         .learning_rate = 0.05f,
                         .control = control};
  Trainer tr(s.model, o, 12, p);
  machine.drive(tr);
  std::vector<std::string> lines;
  tr.log = [&](const std::string& l) { lines.push_back(l); };
  std::vector<int> threads;  // per step
  tr.on_step = [&](std::uint64_t, double, std::int64_t, std::int64_t) { threads.push_back(s.ctx.threads()); };
  std::optional<TrainerState> mid_busy;
  for (int e = 0; e < 12; ++e) {
    tr.train_epoch(source, e);
    if (tr.step() == 84) mid_busy = tr.state();
  }
  REQUIRE(threads.size() == 144);
  const auto count = [&](std::size_t from, std::size_t to, int n) {
    return std::count(threads.begin() + std::ptrdiff_t(from), threads.begin() + std::ptrdiff_t(to), n);
  };
  CHECK(count(0, 40, 2) == 40);     // an idle machine is never tried on fewer threads
  CHECK(count(70, 100, 1) >= 20);   // the busy stretch runs mostly on one thread, once found
  CHECK(count(120, 144, 2) == 24);  // and the free core is taken back
  const auto switches =
      std::count_if(lines.begin(), lines.end(), [](const std::string& l) { return l.find("threads ") == 0; });
  CHECK(switches >= 3);  // to one thread, at least one lost trial of two while busy, back to two
  CHECK(switches <= 8);
  CHECK(std::any_of(lines.begin(), lines.end(),
                    [](const std::string& l) { return l.find("threads 2 -> 1 at step") == 0; }));
  CHECK(s.ctx.threads() == 2);
  // The count is part of the state: a run resumed mid-busy continues on one thread.
  REQUIRE(mid_busy);
  CHECK(mid_busy->control.threads == 1);
  Setup resumed;
  Trainer tr2(resumed.model, o, 12, p);
  tr2.restore(*mid_busy);
  CHECK(resumed.ctx.threads() == 1);
}

TEST_CASE("a machine slow on any thread count pays for few trials: each lost one doubles the wait") {
  Setup s;
  const Profile p = s.fixed_profile(0.5, 2, 1);
  FakeMachine machine{p, selection_units(*s.model.graph)};
  machine.ctx = &s.ctx;
  machine.fwd_x = machine.bwd_x = 2.0;  // slow throughout, and one thread slower still
  machine.one_thread_x = 1.6;
  FakeBatches source{s.batches, machine};
  TimeControlOptions control = quick_control();
  control.retry_windows = 2;
  Trainer tr(s.model,
             {.type = TrainType::elastic_training,
              .num_epochs = 20,
              .interval = 20,
              .rho = 0.7,
              .learning_rate = 0.05f,
              .control = control},
             12, p);
  machine.drive(tr);
  std::vector<std::string> lines;
  tr.log = [&](const std::string& l) { lines.push_back(l); };
  std::vector<std::uint64_t> trials;  // steps at which one thread was tried
  tr.on_step = [&, last = 2](std::uint64_t step, double, std::int64_t, std::int64_t) mutable {
    if (s.ctx.threads() == 1 && last == 2) trials.push_back(step);
    last = s.ctx.threads();
  };
  for (int e = 0; e < 20; ++e) tr.train_epoch(source, e);
  // 240 steps, windows of 4 after 2 settling steps: trying every other window
  // would make about 20 trials; doubling waits of 2, 4, 8, 16 windows leave 4 or 5.
  CHECK(trials.size() >= 3);
  CHECK(trials.size() <= 5);
  for (std::size_t i = 2; i < trials.size(); ++i) CHECK(trials[i] - trials[i - 1] > trials[i - 1] - trials[i - 2]);
  CHECK(s.ctx.threads() == 2);
  CHECK(tr.controller()->state().lost_trials == std::int64_t(trials.size()));
}

TEST_CASE("a deadline plans rho from the remaining time, absorbs a slowdown and says once when it cannot be met") {
  const auto run = [](double deadline_s, double slow_from_step, double slow_x, std::vector<std::string>* lines) {
    Setup s;
    const Profile p = s.fixed_profile(0.5, 2, 1);
    FakeMachine machine{p, selection_units(*s.model.graph)};
    machine.fwd_x = 1.3;
    machine.bwd_x = 0.9;
    FakeBatches source{s.batches, machine};
    source.before_step = [&](std::uint64_t step) {
      if (double(step) >= slow_from_step) machine.fwd_x = 1.3 * slow_x, machine.bwd_x = 0.9 * slow_x;
    };
    Trainer tr(s.model,
               {.type = TrainType::elastic_training,
                .num_epochs = 20,
                .interval = 5,
                .learning_rate = 0.05f,
                .deadline_s = deadline_s,
                .control = quick_control()},
               12, p);
    machine.drive(tr);
    tr.log = [&](const std::string& l) {
      if (lines) lines->push_back(l);
    };
    double total = 0;
    for (int e = 0; e < 20; ++e) total += tr.train_epoch(source, e).train_ms;
    CHECK(total == doctest::Approx(tr.train_ms()));
    MESSAGE("deadline ", deadline_s, " s: training took ", total / 1000, " s over ", tr.selections().size(),
            " selections, last rho ", tr.rho());
    return std::pair{total / 1000, tr.selections()};
  };
  // 240 steps; a full step here takes 1.3 * 14.5 + 0.9 * 27 = 43.15 ms, so 240 full steps about 10.4 s.
  for (const double deadline : {6.0, 8.0}) {
    CAPTURE(deadline);
    const auto [took, sels] = run(deadline, 1e9, 1, nullptr);
    CHECK(took <= deadline);
    CHECK(took >= 0.9 * deadline);
    CHECK(sels.front().rho < 1.0);
  }
  // The machine slows by 1.25x for the second half: re-planned every 100 steps, the run still ends in time.
  {
    const auto [took, sels] = run(8.0, 120, 1.25, nullptr);
    CHECK(took <= 8.0);
    CHECK(took >= 0.9 * 8.0);
  }
  // A 4x slowdown from step 60 cannot be absorbed: it says so once and trains on at the smallest rho.
  {
    std::vector<std::string> lines;
    const auto [took, sels] = run(6.0, 60, 4.0, &lines);
    CHECK(took > 6.0);
    CHECK(std::count_if(lines.begin(), lines.end(),
                        [](const std::string& l) { return l.find("cannot be met") != std::string::npos; }) == 1);
  }
  // Too short from the start: refused before any step, naming the shortest feasible deadline.
  Setup s;
  const Profile p = s.fixed_profile(0.5, 2, 1);
  CHECK_THROWS_WITH_AS(
      Trainer(s.model, {.type = TrainType::elastic_training, .num_epochs = 20, .deadline_s = 1.0}, 12, p),
      doctest::Contains("forward passes of 240 steps alone take about 2.4 s"), UsageError);
  FakeMachine machine{p, selection_units(*s.model.graph)};
  FakeBatches source{s.batches, machine};
  Trainer tr(s.model, {.type = TrainType::elastic_training, .num_epochs = 20, .deadline_s = 2.6}, 12, p);
  machine.drive(tr);
  tr.log = nullptr;
  CHECK_THROWS_WITH_AS(tr.train_epoch(source, 0), doctest::Contains("shortest feasible deadline is about"), UsageError);
  CHECK(tr.step() == 0);
  CHECK_THROWS_WITH_AS(Trainer(s.model, {.type = TrainType::full_training, .deadline_s = 60.0}, 12),
                       doctest::Contains("--deadline needs an elastic training type"), UsageError);
}

TEST_CASE("a machine too slow for the given rho mid-run trains on at the smallest useful rho and says so once") {
  Setup s;
  const Profile p = s.fixed_profile(0.5, 2, 1);
  // Full step 41.5 ms, forward 14.5 of it. From step 3 the forward runs 4x slower and the
  // backward at half speed: the forward alone is then 58 of 71.5 ms, above rho 0.45.
  FakeMachine machine{p, selection_units(*s.model.graph)};
  FakeBatches source{s.batches, machine};
  source.before_step = [&](std::uint64_t step) {
    if (step >= 3) machine.fwd_x = 4, machine.bwd_x = 0.5;
  };
  const double rho = 0.45;
  Trainer tr(s.model,
             {.type = TrainType::elastic_training,
              .num_epochs = 3,
              .interval = 1,
              .rho = rho,
              .learning_rate = 0.05f,
              .control = quick_control()},
             12, p);
  machine.drive(tr);
  std::vector<std::string> lines;
  tr.log = [&](const std::string& l) { lines.push_back(l); };
  for (int e = 0; e < 3; ++e) tr.train_epoch(source, e);  // later probes are not refused either
  const auto& sels = tr.selections();
  REQUIRE(sels.size() >= 3);
  CHECK(sels.front().predicted_share <= rho);
  for (const auto& r : sels) {
    CAPTURE(r.step);
    CHECK(std::count(r.unit_mask.begin(), r.unit_mask.end(), true) >= 1);  // never an empty selection
  }
  const auto& last = sels.back();
  CHECK(last.rho > rho);
  CHECK(last.rho < 1.0);
  CHECK(tr.rho() == last.rho);
  CHECK(last.predicted_share <= last.rho + 1e-9);
  CHECK(std::count_if(lines.begin(), lines.end(), [](const std::string& l) {
          return l.find("rho 0.450 cannot be met") != std::string::npos;
        }) == 1);
}

}  // namespace train_trainer_test
