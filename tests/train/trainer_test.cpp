#include <doctest/doctest.h>

#include "elastic/models/small_cnn.hpp"
#include "elastic/train/trainer.hpp"

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
  Model model = small_cnn(ctx, {.batch = 8, .num_classes = 4, .width1 = 8, .width2 = 16, .seed = 3});
  data::ImageSet set = quadrant_set(96, 1);
  ImageBatcher batches{set, 0.2f, 0.3f, 5};
  Setup() { model.set_batch_stats(false); }
  Profile profile() {
    batches.start_epoch(0, false);
    batches.load(model, 0);
    return TimingProfiler<>({.warmup = 2, .repeats = 5}).run(model, ctx.threads(),
                                                               std::vector<bool>(model.params().size(), true));
  }
};
}  // namespace

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
  CHECK_THROWS_WITH_AS(Trainer(s.model, {.type = TrainType::full_training, .rho = 1.5}, 12),
                       doctest::Contains("--rho"), UsageError);
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
  // The measured units with fixed times: the budget, not the machine's load, decides what fits.
  Profile p = s.profile();
  p.t_fwd = p.t_fwd_frozen = 10;
  std::fill(p.t_fw.begin(), p.t_fw.end(), 0.0);
  std::fill(p.t_dw.begin(), p.t_dw.end(), 1.0);
  std::fill(p.t_dy.begin(), p.t_dy.end(), 1.0);
  Trainer tr(s.model, {.type = TrainType::elastic_training, .num_epochs = 3, .interval = 2, .rho = 0.75,
                       .learning_rate = 0.05f},
             12, p);
  int logged = 0;
  std::vector<std::string> lines;
  tr.on_selection = [&](const SelectionRecord&) { ++logged; };
  tr.log = [&](const std::string& line) { lines.push_back(line); };
  Metrics first, last;
  for (int e = 0; e < 3; ++e) {
    const auto rec = tr.train_epoch(s.batches, e);
    CHECK(rec.steps == 12);
    CHECK(rec.train_ms > 0);
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

TEST_CASE("a rho below the cheapest useful selection is refused, naming the smallest rho") {
  Setup s;
  const Profile p = s.profile();
  Trainer tr(s.model, {.type = TrainType::elastic_training, .num_epochs = 1, .rho = 0.05}, 12, p);
  CHECK_THROWS_WITH_AS(tr.train_epoch(s.batches, 0), doctest::Contains("needs rho >="), UsageError);
  Profile fewer = p;
  fewer.units.pop_back();
  CHECK_THROWS_AS(Trainer(s.model, {.type = TrainType::elastic_training}, 12, fewer), Error);
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
      // First SGDW step: v = -lr * (g + l1 * sign(w)); the difference is -lr * l1 * sign(w0).
      CHECK(kernel_step[1] - kernel_step[0] == doctest::Approx(-0.1f * 0.01f * (w0 > 0 ? 1 : -1)).epsilon(1e-3));
      CHECK(bias_step[1] == doctest::Approx(bias_step[0]));
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
  for (std::size_t i = 1; i < after.size(); ++i) REQUIRE(((after[i] == before[i]) || (std::isnan(after[i]) && std::isnan(before[i]))));
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
  Profile p = s.profile();
  p.t_fwd = p.t_fwd_frozen = 10;
  std::fill(p.t_fw.begin(), p.t_fw.end(), 0.0);
  std::fill(p.t_dw.begin(), p.t_dw.end(), 1.0);
  std::fill(p.t_dy.begin(), p.t_dy.end(), 1.0);
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
  CHECK(lines[0].find("selected in 10 ms") != std::string::npos);
  CHECK(tr.train_epoch(source, 1).train_ms == 120);  // no selection in epoch 1
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
  Trainer adam(s2.model, {.type = TrainType::full_training, .num_epochs = 1, .optimizer = "adam",
                          .learning_rate = 0.01f},
               12);
  adam.log = nullptr;
  adam.train_epoch(s2.batches, 0);
  CHECK(adam.learning_rate() == 0.01f);
  // Adam has no decay unless one is given; given, it is AdamW: the same run ends with other weights.
  Setup s3;
  Trainer adamw(s3.model, {.type = TrainType::full_training, .num_epochs = 1, .optimizer = "adam",
                           .learning_rate = 0.01f, .weight_decay = 1.0f},
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
