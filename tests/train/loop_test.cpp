#include "elastic/train/loop.hpp"

#include <doctest/doctest.h>

#include "elastic/models/small_cnn.hpp"
#include "elastic/optim/schedule.hpp"
#include "elastic/train/step.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace train_loop_test {

using namespace elastic;

namespace {
data::ImageSet head(const data::ImageSet& s, std::int64_t n) {
  data::ImageSet out = s;
  out.labels.resize(static_cast<std::size_t>(n));
  out.pixels.resize(static_cast<std::size_t>(n * s.height * s.width));
  return out;
}

// n 28x28 images; image i is uniformly gray at level f(i), label i % 10.
template <class F>
data::ImageSet synthetic(int n, F level) {
  data::ImageSet s;
  s.height = 28;
  s.width = 28;
  for (int i = 0; i < n; ++i) {
    s.labels.push_back(i % 10);
    for (int p = 0; p < 28 * 28; ++p) s.pixels.push_back(static_cast<std::uint8_t>(level(i)));
  }
  return s;
}
}  // namespace

TEST_CASE("the small CNN learns Fashion-MNIST: loss falls and accuracy is far above chance") {
  REQUIRE_MESSAGE(std::filesystem::exists(data::kFashionMnistDir),
                  "Debian's dataset-fashion-mnist is not installed (scripts/install-deps installs it)");
  const auto ds = data::load_fashion_mnist();
  const auto train_set = head(ds.train, 6000), test_set = head(ds.test, 1000);
  Context ctx(2);
  Model model = small_cnn(ctx, {.batch = 32, .width1 = 16, .width2 = 32, .seed = 3});
  ImageBatcher train(train_set, 0.286f, 0.353f, 3), test(test_set, 0.286f, 0.353f, 3);
  SGDW opt({.momentum = 0.9f, .weight_decay = 5e-4f});
  const std::int64_t steps = train.batches(32, true);
  const int epochs = 3;
  const CosineDecay schedule{0.05f, steps * epochs};
  const std::vector<bool> all(model.params().size(), true);

  const Metrics before = evaluate(model, test);
  std::uint64_t step = 0;
  Metrics first_epoch, last_epoch;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    train.start_epoch(static_cast<std::uint64_t>(epoch), true);
    Metrics m;
    TrainStep train_step(model, opt);
    for (std::int64_t b = 0; b < steps; ++b, ++step) {
      train.load(model, b);
      const auto& loss = train_step(step, all, schedule(static_cast<std::int64_t>(step)));
      m.add(loss.loss(), loss.correct(), loss.count());
    }
    (epoch == 0 ? first_epoch : last_epoch) = m;
  }
  const Metrics after = evaluate(model, test);
  MESSAGE("test loss ", before.loss(), " -> ", after.loss(), ", accuracy ", before.accuracy(), " -> ",
          after.accuracy());
  CHECK(after.count == 1000);
  CHECK(std::isfinite(after.loss()));
  CHECK(after.loss() < 0.6 * before.loss());
  CHECK(last_epoch.loss() < first_epoch.loss());
  CHECK(after.accuracy() > 0.70);  // chance is 0.10
}

TEST_CASE("the batcher pads a short last batch and the padding does not count") {
  const auto s = synthetic(5, [](int i) { return i * 40; });
  Context ctx(1);
  Model model = small_cnn(ctx, {.batch = 4, .width1 = 8, .width2 = 8});
  ImageBatcher b(s, 0.0f, 1.0f, 0);
  CHECK(b.batches(4, false) == 2);
  CHECK(b.batches(4, true) == 1);
  b.start_epoch(0, false);
  CHECK(b.load(model, 1) == 1);
  const float* x = model.graph->value_data(model.images);
  CHECK(x[0] == doctest::Approx(160.0f / 255.0f));
  CHECK(x[28 * 28] == 0.0f);
  const Metrics m = evaluate(model, b);
  CHECK(m.count == 5);
  CHECK_THROWS_AS(b.load(model, 2), Error);
}

TEST_CASE("shuffling is a seeded permutation that changes with the epoch") {
  const auto s = synthetic(64, [](int i) { return i; });
  Context ctx(1);
  Model model = small_cnn(ctx, {.batch = 64, .width1 = 8, .width2 = 8});
  const auto first_pixels = [&](ImageBatcher& b, std::uint64_t epoch) {
    b.start_epoch(epoch, true);
    b.load(model, 0);
    const float* x = model.graph->value_data(model.images);
    std::vector<int> v;
    for (int i = 0; i < 64; ++i) v.push_back(static_cast<int>(std::lround(x[i * 28 * 28] * 255.0f)));
    return v;
  };
  ImageBatcher a(s, 0.0f, 1.0f, 5), c(s, 0.0f, 1.0f, 5);
  const auto e0 = first_pixels(a, 0), e0_again = first_pixels(c, 0), e1 = first_pixels(a, 1);
  CHECK(e0 == e0_again);
  CHECK(e0 != e1);
  auto sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < 64; ++i) CHECK(sorted[static_cast<std::size_t>(i)] == i);
}

}  // namespace train_loop_test
