// The prefetching loader: its batches equal a plain sequential computation,
// depend only on (seed, epoch, position), and corrupt files fail or are
// skipped as asked.
#include "elastic/data/loader.hpp"

#include <algorithm>
#include <chrono>
#include <thread>

#include <doctest/doctest.h>

#include "elastic/models/small_cnn.hpp"
#include "elastic/train/trainer.hpp"
#include "support/dataset_fixtures.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace data_loader_test {

using namespace elastic;
using namespace elastic::data;

namespace {

const Normalize kNorm{.mean = {0.485f, 0.456f, 0.406f}, .stddev = {0.229f, 0.224f, 0.225f}};

LoaderOptions options(std::int64_t batch, bool train, int workers, std::uint64_t seed = 7) {
  return {.batch = batch,
          .height = 12,
          .width = 10,
          .normalize = kNorm,
          .augment = train,
          .drop_last = train,
          .seed = seed,
          .workers = workers,
          .prefetch = 3};
}

struct Epoch {
  std::vector<float> images;
  std::vector<std::int32_t> labels;
  std::vector<std::int64_t> counts;
  bool operator==(const Epoch&) const = default;
};

Epoch run_epoch(Loader& l, std::uint64_t epoch, bool shuffle) {
  Epoch e;
  l.start_epoch(epoch, shuffle);
  for (std::int64_t b = 0; b < l.batches(); ++b) {
    const Batch& batch = l.get(b);
    CHECK(batch.index == b);
    e.images.insert(e.images.end(), batch.images.begin(), batch.images.end());
    e.labels.insert(e.labels.end(), batch.labels.begin(), batch.labels.end());
    e.counts.push_back(batch.count);
  }
  return e;
}

const Dataset& folder() {
  static const Dataset d = open_dataset("image_folder", fixtures::datasets().dir / "folder");
  return d;
}

}  // namespace

TEST_CASE("without shuffle or augmentation, batches are the split's images resized and normalized in order") {
  const Split& test = folder().test;  // 6 images, no corrupt file
  Loader l(test, options(4, false, 2));
  const Epoch e = run_epoch(l, 0, false);
  REQUIRE(e.counts == std::vector<std::int64_t>{4, 2});
  std::vector<float> want(12 * 10 * 3), scratch;
  for (std::int64_t i = 0; i < 8; ++i) {
    const float* got = e.images.data() + i * 12 * 10 * 3;
    if (i >= 6) {  // padding of the short last batch
      CHECK(e.labels[std::size_t(i)] == SoftmaxCrossEntropy::kIgnore);
      CHECK(std::all_of(got, got + 360, [](float v) { return v == 0.0f; }));
      continue;
    }
    transform_image(read_image(test.files[std::size_t(i)]), 12, 10, nullptr, kNorm, want.data(), scratch);
    CHECK(std::equal(want.begin(), want.end(), got));
    CHECK(e.labels[std::size_t(i)] == test.labels[std::size_t(i)]);
  }
}

TEST_CASE("background decoding gives exactly the batches of decoding on the caller's thread") {
  const Split& test = folder().test;
  for (int workers : {1, 2, 3}) {
    Loader sync(test, options(2, true, 0));
    Loader async(test, options(2, true, workers));
    for (std::uint64_t epoch : {0u, 1u, 5u}) {
      CAPTURE(workers);
      CAPTURE(epoch);
      const Epoch a = run_epoch(sync, epoch, true), b = run_epoch(async, epoch, true);
      CHECK(a == b);
    }
  }
}

TEST_CASE("shuffling and augmentation are seeded per epoch") {
  const Split& test = folder().test;
  Loader l(test, options(2, true, 2));
  const Epoch e0 = run_epoch(l, 0, true), e1 = run_epoch(l, 1, true), e0_again = run_epoch(l, 0, true);
  CHECK(e0 == e0_again);
  CHECK(e0.images != e1.images);
  // Each epoch holds every sample once (3 full batches of 2).
  for (const Epoch* e : {&e0, &e1}) {
    auto labels = e->labels;
    auto want = test.labels;
    std::sort(labels.begin(), labels.end());
    std::sort(want.begin(), want.end());
    CHECK(labels == want);
  }
  Loader other(test, options(2, true, 2, 8));
  CHECK(run_epoch(other, 0, true).images != e0.images);
  // Augmentation changes pixels but not which samples come in which order.
  LoaderOptions plain = options(2, true, 2);
  plain.augment = false;
  Loader unaugmented(test, plain);
  const Epoch u = run_epoch(unaugmented, 0, true);
  CHECK(u.labels == e0.labels);
  CHECK(u.images != e0.images);
}

TEST_CASE("drop_last leaves out the short batch; the trainer's batch count checks the model's batch") {
  const Split& train = folder().test;  // 6 samples
  Loader l(train, options(4, true, 1));
  CHECK(l.batches() == 1);
  CHECK(l.batches(4, true) == 1);
  CHECK_THROWS_WITH(l.batches(8, true), doctest::Contains("loader batches 4 samples but the model takes 8"));
  CHECK_THROWS_WITH(l.get(1), doctest::Contains("batch 1 is outside the epoch's 1 batches"));
  CHECK_THROWS_WITH(Loader(train, options(7, true, 1)), doctest::Contains("6 samples make no full batch of 7"));
}

TEST_CASE("asking again for the last batch returns it; out-of-order requests restart the pipeline") {
  const Split& test = folder().test;
  Loader sync(test, options(2, true, 0));
  const Epoch want = run_epoch(sync, 3, true);
  Loader l(test, options(2, true, 2));
  l.start_epoch(3, true);
  const auto slice = [&](std::int64_t b) {
    const Batch& batch = l.get(b);
    return std::vector<float>(batch.images.begin(), batch.images.end());
  };
  const auto want_slice = [&](std::int64_t b) {
    return std::vector<float>(want.images.begin() + b * 720, want.images.begin() + (b + 1) * 720);
  };
  CHECK(slice(0) == want_slice(0));
  CHECK(slice(0) == want_slice(0));  // the trainer's probe batch, then its first step
  CHECK(slice(2) == want_slice(2));
  CHECK(slice(1) == want_slice(1));
  CHECK(slice(2) == want_slice(2));
  CHECK(slice(0) == want_slice(0));
}

TEST_CASE("a corrupt file is an error naming it, or with skip_bad a counted warning and an ignored sample") {
  const auto& fx = fixtures::datasets();
  const Split& train = folder().train;
  const auto corrupt = (fx.dir / fx.manifest["image_folder"]["corrupt"][0].get<std::string>()).string();
  {
    Loader l(train, options(2, false, 2));
    l.start_epoch(0, false);
    std::string message;
    try {
      for (std::int64_t b = 0; b < l.batches(); ++b) l.get(b);
    } catch (const DecodeError& e) {
      message = e.what();
    }
    CHECK(message.find(corrupt) != std::string::npos);
  }
  LoaderOptions o = options(2, false, 2);
  o.skip_bad = true;
  Loader l(train, o);
  std::vector<std::string> warnings;
  l.warn = [&](const std::string& w) { warnings.push_back(w); };
  std::int64_t ignored = 0;
  for (std::uint64_t epoch : {0u, 1u}) {
    const Epoch e = run_epoch(l, epoch, false);
    for (std::size_t i = 0; i < train.labels.size(); ++i)
      if (e.labels[i] == SoftmaxCrossEntropy::kIgnore) {
        ++ignored;
        CHECK(train.files[i].string() == corrupt);
      }
  }
  CHECK(ignored == 2);
  CHECK(l.skipped() == 2);
  CHECK(l.failed_files() == std::vector<std::string>{corrupt});
  REQUIRE(warnings.size() == 1);  // once per file, not per epoch
  CHECK(warnings[0].find(corrupt) != std::string::npos);
}

TEST_CASE("the loader feeds a model and the trainer; evaluation with twice the batch gives the same metrics") {
  Context ctx(1);
  Model m = small_cnn(ctx, {.batch = 2,
                            .channels = 3,
                            .height = 12,
                            .width = 10,
                            .num_classes = 3,
                            .width1 = 4,
                            .width2 = 8,
                            .dropout = 0.0f});
  const Split& test = folder().test;
  Loader one(test, loader_options_for(m, false, 1));
  LoaderOptions o2 = loader_options_for(m, false, 1);
  o2.batch = 4;
  Loader two(test, o2);
  const Metrics a = evaluate(m, one), b = evaluate(m, two);
  CHECK(a.count == 6);
  CHECK(b.count == 6);
  CHECK(a.correct == b.correct);
  CHECK(a.loss() == doctest::Approx(b.loss()).epsilon(1e-6));

  // A model of another input size is refused, naming both.
  Model other = small_cnn(ctx, {.batch = 2, .channels = 3, .height = 16, .width = 16, .num_classes = 3});
  CHECK_THROWS_WITH(one.load(other, 0), doctest::Contains("makes 3x12x10"));

  // One epoch of training through the trainer: its step count and the data wait it reports.
  Loader train(folder().test, loader_options_for(m, true, 3));
  Trainer t(m, TrainerOptions{.type = TrainType::full_training, .num_epochs = 1}, train.batches());
  t.log = nullptr;
  const double before = train.wait_ms();
  const EpochRecord r = t.train_epoch(train, 0);
  CHECK(r.steps == 3);
  CHECK(r.train.count == 6);
  CHECK(r.data_wait_ms == doctest::Approx(train.wait_ms() - before));
  CHECK(r.data_wait_ms <= r.train_ms);
}

TEST_CASE("prefetching hides decoding from a consumer slower than the decoder") {
  const Split& train = folder().train;
  LoaderOptions o = options(2, true, 2);
  o.skip_bad = true;
  o.prefetch = 5;
  Loader l(train, o);
  l.warn = nullptr;
  l.start_epoch(0, true);
  l.get(0);
  // Give the workers time to fill the ring, then consume it: nothing to wait for.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const double before = l.wait_ms();
  for (std::int64_t b = 1; b < l.batches(); ++b) l.get(b);
  CHECK(l.wait_ms() - before < 5.0);
}

}  // namespace data_loader_test
