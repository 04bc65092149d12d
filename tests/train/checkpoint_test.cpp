// Checkpoints: a round trip restores weights, buffers, optimizer and trainer
// state exactly; a torn temporary file never replaces the last checkpoint;
// a checkpoint of another model or with broken state is an error naming it.
#include "elastic/train/checkpoint.hpp"

#include <fstream>

#include <unistd.h>

#include <doctest/doctest.h>

#include "elastic/models/small_cnn.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace train_checkpoint_test {

using namespace elastic;
namespace fs = std::filesystem;

namespace {

data::ImageSet noise_set(int n) {
  data::ImageSet s;
  s.height = s.width = 28;
  Rng rng(9);
  for (int i = 0; i < n; ++i) {
    s.labels.push_back(static_cast<int>(rng.below(3)));
    for (int p = 0; p < 28 * 28; ++p) s.pixels.push_back(static_cast<std::uint8_t>(rng.below(256)));
  }
  return s;
}

std::vector<float> all_values(const ParamStore& store) {
  std::vector<float> v;
  for (const auto& p : store.params()) v.insert(v.end(), p.values().begin(), p.values().end());
  for (const auto& b : store.buffers()) v.insert(v.end(), b.values().begin(), b.values().end());
  return v;
}

struct Run {
  Context ctx{1};
  Model model = small_cnn(ctx, {.batch = 4, .num_classes = 3, .width1 = 4, .width2 = 8, .seed = 2});
  data::ImageSet set = noise_set(16);
  ImageBatcher batches{set, 0.5f, 0.3f, 1};
  Trainer trainer{model, {.type = TrainType::bn_plus_bias_training, .num_epochs = 2, .learning_rate = 0.05f}, 4};
  Run() {
    model.set_batch_stats(true);  // running statistics change: buffers must round-trip too
    trainer.log = nullptr;
  }
};

fs::path temp(const char* name) {
  return fs::temp_directory_path() / fmt::format("elastic_ckpt_{}_{}", name, ::getpid());
}

// A run trained for one epoch and checkpointed, as at an epoch's end.
struct Saved {
  Run a;
  fs::path path;
  explicit Saved(const char* name) : path(temp(name)) {
    a.trainer.train_epoch(a.batches, 0);
    save_checkpoint(path, a.model.params(), a.trainer.state(), {{"epoch", 0}});
  }
  ~Saved() { fs::remove(path); }
};

}  // namespace

TEST_CASE("a checkpoint restores weights, buffers, optimizer and trainer state exactly") {
  Run a;
  a.trainer.train_epoch(a.batches, 0);
  const auto path = temp("roundtrip");
  SelectionRecord sel{.epoch = 0,
                      .unit_mask = {true, false, true},
                      .importance = 1.5,
                      .predicted_share = 0.4,
                      .unit_importance = {0.25, -0.125, 1.0},
                      .scores = "previous",
                      .selected_units = {"conv1", "fc"}};
  TrainerState st = a.trainer.state();
  st.selections.push_back(sel);
  st.control = {.fwd_scale = 1.25,
                .bwd_scale = 0.75,
                .other_ms = 0.5,
                .resolves = 2,
                .since_install = 9,
                .window = 3,
                .fwd_sum = 1.5,
                .bwd_sum = 2.5,
                .other_sum = 0.25,
                .threads = 1,
                .windows_on = 4,
                .lost_trials = 2,
                .trial_from = 2,
                .trial_full = 33.5,
                .trial_fwd_scale = 1.5,
                .trial_bwd_scale = 0.5};
  save_checkpoint(path, a.model.params(), st, {{"epoch", 0}, {"note", "kept"}});

  Run b;  // a fresh process's view: other weights, no optimizer state
  CHECK(all_values(b.model.params()) != all_values(a.model.params()));
  const Checkpoint c = load_checkpoint(path, b.model.params());
  CHECK(all_values(b.model.params()) == all_values(a.model.params()));
  CHECK(c.trainer.step == 4);
  CHECK(c.trainer.mask == st.mask);
  CHECK(c.trainer.optimizer == st.optimizer);
  REQUIRE(c.trainer.selections.size() == 1);
  CHECK(c.trainer.selections[0].unit_mask == sel.unit_mask);
  CHECK(c.trainer.selections[0].selected_units == sel.selected_units);
  CHECK(c.trainer.selections[0].predicted_share == 0.4);
  CHECK(c.trainer.selections[0].unit_importance == sel.unit_importance);
  CHECK(c.trainer.selections[0].scores == "previous");
  CHECK(c.trainer.control == st.control);  // every field of the time controller, thread adaptation included
  CHECK(c.run["note"] == "kept");
  b.trainer.restore(c.trainer);
  CHECK(b.trainer.mask() == a.trainer.mask());

  // The next epoch of both is identical, bit for bit.
  a.trainer.train_epoch(a.batches, 1);
  b.trainer.train_epoch(b.batches, 1);
  CHECK(all_values(b.model.params()) == all_values(a.model.params()));
  CHECK(b.trainer.optimizer().state() == a.trainer.optimizer().state());
  fs::remove(path);
}

TEST_CASE("a torn write leaves the previous checkpoint in place and loadable") {
  Saved saved("torn");
  Run& a = saved.a;
  const auto& path = saved.path;
  const auto before = all_values(a.model.params());
  // A writer killed mid-write leaves only a partial temporary file behind: a header length
  // (64) and the start of the header.
  const std::string_view torn("\x40\x00\x00\x00\x00\x00\x00\x00{\"partial", 17);
  std::ofstream(path.string() + ".tmp", std::ios::binary).write(torn.data(), std::streamsize(torn.size()));
  REQUIRE(fs::file_size(path.string() + ".tmp") == torn.size());
  Run b;
  load_checkpoint(path, b.model.params());
  CHECK(all_values(b.model.params()) == before);
  // The next save replaces the stale temporary and the checkpoint.
  a.trainer.train_epoch(a.batches, 1);
  save_checkpoint(path, a.model.params(), a.trainer.state(), {{"epoch", 1}});
  CHECK_FALSE(fs::exists(path.string() + ".tmp"));
  CHECK(load_checkpoint(path, b.model.params()).run["epoch"] == 1);
}

TEST_CASE("checkpoints of another model, plain weight files and broken state are refused, naming the file") {
  Saved saved("other");
  Run& a = saved.a;
  const auto& path = saved.path;
  Context ctx(1);
  Model wider = small_cnn(ctx, {.batch = 4, .num_classes = 3, .width1 = 6, .width2 = 8});
  CHECK_THROWS_WITH(load_checkpoint(path, wider.params()), doctest::Contains("does not fit the model"));

  const auto weights = temp("weights");
  io::save_weights(a.model.params(), weights);
  CHECK_THROWS_WITH(load_checkpoint(weights, a.model.params()),
                    doctest::Contains(fmt::format("'{}' is not a checkpoint", weights.string()).c_str()));

  io::SafetensorsWriter w;
  w.set_metadata("elastic_state", R"({"step": 3, "mask": "10x"})");
  w.write(weights);
  CHECK_THROWS_WITH(load_checkpoint(weights, a.model.params()), doctest::Contains("is not a string of 0 and 1"));
  w.set_metadata("elastic_state", R"({"step": 3})");
  w.write(weights);
  CHECK_THROWS_WITH(load_checkpoint(weights, a.model.params()),
                    doctest::Contains(fmt::format("'{}': malformed checkpoint state", weights.string()).c_str()));
  CHECK_THROWS_WITH(load_checkpoint(temp("missing"), a.model.params()), doctest::Contains("no checkpoint"));
  fs::remove(weights);
}

}  // namespace train_checkpoint_test
