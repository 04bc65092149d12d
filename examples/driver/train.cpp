// `elastic train`: a whole fine-tuning run as the reference's main does it,
// with metrics files, atomic checkpoints and exact resumption.
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "driver/driver.hpp"
#include "driver/progress.hpp"
#include "elastic/core/timer.hpp"
#include "elastic/data.hpp"
#include "elastic/io/weights.hpp"
#include "elastic/method/timing_profiler.hpp"
#include "elastic/models/zoo.hpp"
#include "elastic/train/checkpoint.hpp"
#include "elastic/train/trainer.hpp"

namespace elastic::cli {

namespace fs = std::filesystem;

namespace {
// --checkpoint_every: a whole number of steps, or a duration of training time.
struct CheckpointEvery {
  std::int64_t steps = 0;  // 0: not by steps
  double seconds = 0;      // 0: not by time
};
CheckpointEvery parse_checkpoint_every(const std::string& text) {
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
    if (text.size() > 12) usage_fail("--checkpoint_every '{}' is too many steps", text);
    return {.steps = std::stoll(text)};
  }
  return {.seconds = parse_duration_s(text, "--checkpoint_every")};
}
}  // namespace
using nlohmann::json;

void add_train_options(CLI::App& c, TrainArgs& a) {
  c.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // a repeated flag: the last wins
  c.add_option("--model_name", a.model_name, "resnet50, vgg16, mobilenetv2 or vit")->capture_default_str();
  c.add_option("--dataset_name", a.dataset_name,
               "caltech_birds2011, oxford_iiit_pet, stanford_dogs, image_folder or fashion_mnist")
      ->capture_default_str();
  c.add_option("--train_type", a.train_type,
               "full_training, traditional_tl_training, bn_plus_bias_training, elastic_training, "
               "elastic_training_weight_magnitude, elastic_training_grad_magnitude or prunetrain")
      ->capture_default_str();
  c.add_option("--input_size", a.input_size, "image side in pixels")
      ->capture_default_str()
      ->check(cli::in_range(16, 4096));
  c.add_option("--batch_size", a.batch_size, "training batch (tests use twice this)")
      ->capture_default_str()
      ->check(cli::positive);
  c.add_option("--num_classes", a.num_classes, "classes of the new head (0: the dataset's)")
      ->capture_default_str()
      ->check(cli::non_negative);
  c.add_option("--optimizer", a.optimizer, "sgd (SGDW, momentum 0.9) or adam; empty: adam for vit, else sgd")
      ->capture_default_str();
  c.add_option("--learning_rate", a.learning_rate, "initial learning rate, cosine-decayed to 0")
      ->capture_default_str()
      ->check(cli::positive);
  c.add_option_function<float>(
       "--weight_decay", [&a](const float& wd) { a.weight_decay = wd; },
       "decoupled weight decay: each step shrinks the trained weights by weight_decay * learning rate "
       "[default: 5e-4 with sgd, none with adam; given with adam it makes AdamW]")
      ->check(cli::non_negative);
  c.add_option("--num_epochs", a.num_epochs, "epochs")->capture_default_str()->check(cli::positive);
  c.add_option("--run_name", a.run_name, "name of the run: its files go to <log_dir>/<run_name>/")
      ->capture_default_str();
  c.add_flag("--save_model", a.save_model, "write the final weights to <log_dir>/<run_name>/model.safetensors");
  c.add_option("--checkpoint_every", a.checkpoint_every,
               "also checkpoint within epochs: every N steps (500), or every so much training time with a suffix "
               "s, m or h (10m), counted from the last checkpoint; 0: at epoch ends only (a checkpoint is always "
               "written at every epoch end, and on "
               "SIGINT or SIGTERM after the step in progress)")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](std::string& text) {
            try {
              parse_checkpoint_every(text);
              return std::string();
            } catch (const UsageError& e) {
              return std::string(e.what());
            }
          },
          "STEPS|DURATION"));
  c.add_flag("--save_txt", a.save_txt, "also write every log line to <log_dir>/<run_name>/log.txt");
  c.add_option("--interval", a.interval, "epochs between re-selections (elastic types)")
      ->capture_default_str()
      ->check(cli::positive);
  c.add_option_function<double>(
      "--rho",
      [&a](const double& rho) {
        a.rho = rho;
        a.rho_given = true;
      },
      "target share of a full training step's time, in (0, 1] [default: 0.533]");
  c.add_option("--time_control", a.time_control,
               "on: measured steps correct the time model and the selection is solved again when it strays; off: "
               "the profile's plan is kept (selections then do not depend on timing)")
      ->capture_default_str()
      ->check(CLI::IsMember({"on", "off"}));
  c.add_option_function<std::string>(
       "--deadline", [&a](const std::string& d) { a.deadline_s = parse_duration_s(d, "--deadline"); },
       "finish training (validation excluded) within this time instead of holding --rho: seconds, or with a "
       "suffix s, m or h (45m, 2h); elastic types")
      ->check(CLI::Validator(
          [](std::string& d) {
            try {
              parse_duration_s(d, "--deadline");
              return std::string();
            } catch (const UsageError& e) {
              return std::string(e.what());
            }
          },
          "DURATION"));
  c.add_option("--data_dir", a.data_dir, "dataset directory (fashion_mnist: Debian's package directory by default)");
  c.add_option("--classes", a.classes, "keep only these 0-based classes, relabelled in order, e.g. 5-9");
  c.add_option("--weights", a.weights, "safetensors backbone with torchvision names (the head is not loaded)");
  c.add_option("--threads", a.threads, "kernel threads (0: all cores)")
      ->capture_default_str()
      ->check(cli::non_negative);
  c.add_option("--workers", a.workers, "image decoding threads (0: decode on the training thread)")
      ->capture_default_str()
      ->check(cli::non_negative);
  c.add_option("--seed", a.seed, "seed of initialization, shuffling, augmentation and dropout")->capture_default_str();
  c.add_option("--log_dir", a.log_dir, "directory of run directories")->capture_default_str();
  c.add_flag("--resume", a.resume, "continue the run <log_dir>/<run_name> from its last checkpoint");
  c.add_option("--profile", a.profile,
               "timing profile from `elastic profile` (elastic types; without it the model is profiled first)");
  c.add_flag("--skip_bad", a.skip_bad, "leave out images that fail to decode (with a warning) instead of stopping");
  c.add_option("--steps_per_epoch", a.steps_per_epoch, "cap on steps per epoch (0: the whole training split)")
      ->capture_default_str()
      ->check(cli::non_negative);
  c.add_flag("--bn_batch_stats", a.bn_batch_stats,
             "batch norm normalizes with batch statistics and updates its running ones (training from scratch); "
             "by default they stay frozen, as when fine-tuning a pretrained backbone");
  c.add_flag("--no_augment", a.no_augment, "train without the random flip and rotation");
  c.add_option_function<float>(
       "--dropout", [&a](const float& p) { a.dropout = p; }, "dropout rate of the new head [default: 0.2, for vit 0]")
      ->check(cli::in_range(0, 0.95));
}

namespace {

// The settings a resumed run must share with the run it continues.
json run_config(const TrainArgs& a, std::int64_t num_classes, std::int64_t steps_per_epoch) {
  return {{"model_name", a.model_name},
          {"dataset_name", a.dataset_name},
          {"train_type", a.train_type},
          {"input_size", a.input_size},
          {"batch_size", a.batch_size},
          {"num_classes", num_classes},
          {"optimizer", a.optimizer},
          {"learning_rate", a.learning_rate},
          {"weight_decay", a.weight_decay ? json(*a.weight_decay) : json()},
          {"num_epochs", a.num_epochs},
          {"interval", a.interval},
          {"rho", a.rho},
          {"deadline_s", a.deadline_s ? json(*a.deadline_s) : json()},
          {"time_control", a.time_control},
          {"classes", a.classes},
          {"seed", a.seed},
          {"steps_per_epoch", steps_per_epoch},
          {"dropout", a.dropout ? json(*a.dropout) : json()},
          {"bn_batch_stats", a.bn_batch_stats},
          {"no_augment", a.no_augment}};
}

// What each selection was solved for and what it measured (summary.json).
json rho_per_selection(const std::vector<SelectionRecord>& selections) {
  json out = json::array();
  for (const auto& s : selections)
    out.push_back({{"epoch", s.epoch + 1},
                   {"step", s.step},
                   {"reason", s.reason},
                   {"rho", s.rho},
                   {"predicted_share", s.predicted_share},
                   {"measured_share", s.measured_share >= 0 ? json(s.measured_share) : json()}});
  return out;
}

// Appends JSON lines, flushed one by one; on resume the file is first cut back
// to its size at the checkpoint.
class MetricsFile {
 public:
  MetricsFile(const fs::path& path, std::optional<std::uintmax_t> truncate_to) : path_(path) {
    if (truncate_to) {
      if (!fs::exists(path)) fail("'{}' is missing: cannot resume the run's metrics", path.string());
      if (fs::file_size(path) < *truncate_to)
        fail("'{}' is shorter ({} bytes) than at the checkpoint ({} bytes)", path.string(), fs::file_size(path),
             *truncate_to);
      fs::resize_file(path, *truncate_to);
    }
    file_ = std::fopen(path.c_str(), "ab");
    if (!file_) fail("cannot open '{}' for writing", path.string());
  }
  ~MetricsFile() {
    if (file_) std::fclose(file_);
  }
  MetricsFile(const MetricsFile&) = delete;
  MetricsFile& operator=(const MetricsFile&) = delete;

  void write(const json& j) {
    const std::string line = j.dump() + "\n";
    if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
      fail("cannot write '{}'", path_.string());
  }
  // Bytes written so far, durably.
  std::uintmax_t sync() {
    if (std::fflush(file_) != 0 || ::fsync(::fileno(file_)) != 0) fail("cannot write '{}'", path_.string());
    return fs::file_size(path_);
  }

 private:
  fs::path path_;
  std::FILE* file_ = nullptr;
};

json to_json(const Metrics& m) { return {{"loss_sum", m.loss_sum}, {"correct", m.correct}, {"count", m.count}}; }
Metrics metrics_from_json(const json& j) {
  return {json_number(j.at("loss_sum"), "loss_sum"), json_integer<std::int64_t>(j.at("correct"), "correct"),
          json_integer<std::int64_t>(j.at("count"), "count")};
}

// A stop request from SIGINT or SIGTERM: the signal's number, 0 for none.
// The handlers are one-shot, so a second Ctrl-C ends the process at once.
volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int signo) { g_stop_signal = signo; }

struct StopSignals {
  struct sigaction old_int {
  }, old_term{};
  StopSignals() {
    g_stop_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    ::sigaction(SIGINT, &sa, &old_int);
    ::sigaction(SIGTERM, &sa, &old_term);
  }
  ~StopSignals() {
    ::sigaction(SIGINT, &old_int, nullptr);
    ::sigaction(SIGTERM, &old_term, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
};

}  // namespace

int run_train(const TrainArgs& a) {
  const TrainType type = parse_train_type(a.train_type);
  if (!(a.rho > 0 && a.rho <= 1)) usage_fail("--rho must be in (0, 1], got {}", a.rho);
  if (a.deadline_s && a.rho_given) usage_fail("--rho and --deadline exclude each other: give one");
  if (a.deadline_s && a.time_control == "off")
    usage_fail("--deadline plans with measured step times: it needs --time_control on");
  if (a.deadline_s && !is_elastic(type))
    usage_fail("--deadline needs an elastic --train_type (it plans rho), not {}", a.train_type);
  if (a.optimizer != "" && a.optimizer != "sgd" && a.optimizer != "adam")
    usage_fail("--optimizer '{}' is not one of sgd, adam", a.optimizer);
  if (a.run_name.empty() || a.run_name.find('/') != std::string::npos)
    usage_fail("--run_name '{}' must be a non-empty name without '/'", a.run_name);
  const CheckpointEvery checkpoint_every = parse_checkpoint_every(a.checkpoint_every);
  const StopSignals stop_signals;
  const Stopwatch wall;
  Progress progress;
  const fs::path run_dir = fs::path(a.log_dir) / a.run_name;
  const fs::path checkpoint_path = run_dir / "checkpoint.safetensors", metrics_path = run_dir / "metrics.jsonl";
  if (a.resume && !fs::exists(checkpoint_path))
    usage_fail("--resume: no checkpoint '{}' (the run ended or was killed before its first one)",
               checkpoint_path.string());
  if (!a.resume && fs::exists(metrics_path))
    usage_fail("run directory '{}' already holds a run: pass --resume to continue it or choose another --run_name",
               run_dir.string());
  fs::create_directories(run_dir);

  std::unique_ptr<std::FILE, int (*)(std::FILE*)> text_log(nullptr, &std::fclose);
  if (a.save_txt) {
    text_log.reset(std::fopen((run_dir / "log.txt").c_str(), a.resume ? "ab" : "wb"));
    if (!text_log) fail("cannot write '{}'", (run_dir / "log.txt").string());
  }
  const auto log = [&](const std::string& line) {
    progress.print_line(line);
    if (text_log) {
      fmt::print(text_log.get(), "{}\n", line);
      std::fflush(text_log.get());
    }
  };

  data::DatasetOptions dopt;
  if (!a.classes.empty()) dopt.classes = data::parse_class_list(a.classes);
  const data::Dataset d = data::open_dataset(a.dataset_name, a.data_dir, dopt);
  const std::int64_t num_classes = a.num_classes ? a.num_classes : d.num_classes();
  if (num_classes < d.num_classes())
    usage_fail("--num_classes {} is smaller than the {} classes of {}", num_classes, d.num_classes(), d.name);

  Context ctx(a.threads);
  Model m = build_model(a.model_name, ctx,
                        {.num_classes = num_classes,
                         .input_size = a.input_size,
                         .batch = a.batch_size,
                         .dropout = a.dropout,
                         .seed = a.seed});
  m.set_batch_stats(a.bn_batch_stats);
  if (a.weights.empty())  // fine-tuning settings on an untrained model learn little: say so before any time is spent
    log(fmt::format(
        "warning: no --weights: {} starts from random initialization{}; give --weights FILE to "
        "fine-tune a pretrained model{}",
        m.name, a.bn_batch_stats ? "" : " with its batch-norm statistics frozen at 0 mean and unit variance",
        a.bn_batch_stats ? "" : ", or --bn_batch_stats (and a larger --learning_rate) to train from scratch"));
  if (!a.weights.empty()) {
    const auto report = io::load_weights(m.params(), a.weights, {.skip_prefixes = m.head_prefixes});
    log(fmt::format("loaded {} tensors from '{}' (head {} left as initialized)", report.loaded, a.weights,
                    fmt::join(m.head_prefixes, ", ")));
  }

  data::LoaderOptions train_options = data::loader_options_for(m, true, a.seed);
  train_options.workers = a.workers;
  train_options.augment = !a.no_augment;
  train_options.skip_bad = a.skip_bad;
  data::LoaderOptions test_options = data::loader_options_for(m, false, a.seed);
  test_options.batch = 2 * a.batch_size;
  test_options.workers = a.workers;
  test_options.skip_bad = a.skip_bad;
  data::Loader train_loader(d.train, train_options), test_loader(d.test, test_options);
  train_loader.warn = test_loader.warn = [&](const std::string& w) { log("warning: " + w); };
  const std::int64_t steps_per_epoch =
      a.steps_per_epoch ? std::min(a.steps_per_epoch, train_loader.batches()) : train_loader.batches();
  data::CappedLoader train{train_loader, steps_per_epoch};
  const json config = run_config(a, num_classes, steps_per_epoch);
  if (a.resume) {  // the settings first: they decide whether anything else can match
    const io::SafetensorsFile file(checkpoint_path);
    const auto state = file.metadata().find("elastic_state");
    if (state == file.metadata().end())
      fail("'{}' is not a checkpoint: no elastic_state metadata", checkpoint_path.string());
    const json was = parse_checkpoint_state(state->second, checkpoint_path).run.value("config", json::object());
    for (const auto& [key, value] : config.items())
      if (!was.contains(key) || was[key] != value)
        usage_fail("--resume: the run was started with {} {} but this command has {}", key,
                   was.contains(key) ? was[key].dump() : "(none)", value.dump());
  }

  std::optional<Profile> profile;
  if (is_elastic(type)) {
    const fs::path saved = run_dir / "profile.json";
    const auto opt = make_optimizer(a.optimizer, m.name, a.weight_decay);  // the run's: its update is profiled
    if (!a.profile.empty()) {
      profile = Profile::load(a.profile);
      profile->check_matches(profile_key(m, ctx.threads(), *opt), a.profile);
    } else if (a.resume && fs::exists(saved)) {
      profile = Profile::load(saved);
      profile->check_matches(profile_key(m, ctx.threads(), *opt), saved.string());
    } else {
      log(fmt::format("profiling {} (batch {}, {}x{}, {} threads); `elastic profile --out F` and --profile F reuse one",
                      m.name, a.batch_size, a.input_size, a.input_size, ctx.threads()));
      train_loader.start_epoch(0, false);
      train_loader.load(m, 0);
      profile = TimingProfiler<>().run(m, ctx.threads(), std::vector<bool>(m.params().size(), true), *opt);
      profile->save(saved);
    }
  }

  TrainerOptions topt{.type = type,
                      .num_epochs = a.num_epochs,
                      .interval = a.interval,
                      .rho = a.rho,
                      .optimizer = a.optimizer,
                      .learning_rate = a.learning_rate,
                      .weight_decay = a.weight_decay,
                      .deadline_s = a.deadline_s};
  topt.control.correct = a.time_control == "on";
  Trainer trainer(m, topt, steps_per_epoch, profile);

  int first_epoch = 0;
  double best = 0, train_ms = 0, wall_before_ms = 0;
  // Every 200 steps: the mean train loss and accuracy over those steps; and over the epoch so far.
  Metrics window, running;
  std::string last_checkpoint;  // the newest checkpoint of this run, for messages
  json epochs = json::array();
  std::optional<std::uintmax_t> metrics_bytes;
  if (a.resume) {
    const Checkpoint c = load_checkpoint(checkpoint_path, m.params());
    try {
      first_epoch = json_integer<int>(c.run.at("epoch"), "epoch") + 1;
      best = json_number(c.run.at("best_test_accuracy"), "best_test_accuracy");
      train_ms = json_number(c.run.at("train_ms"), "train_ms");
      wall_before_ms = json_number(c.run.at("wall_ms"), "wall_ms");
      epochs = c.run.at("epochs");
      metrics_bytes = json_integer<std::uintmax_t>(c.run.at("metrics_bytes"), "metrics_bytes");
      if (c.run.contains("window")) {  // a checkpoint within an epoch: the partial metrics windows
        window = metrics_from_json(c.run.at("window"));
        running = metrics_from_json(c.run.at("running"));
      }
      if (!epochs.is_array()) fail("epochs malformed");
    } catch (const std::exception& e) {
      fail("'{}': malformed run record: {}", checkpoint_path.string(), e.what());
    }
    trainer.restore(c.trainer);
    last_checkpoint = fmt::format(
        "'{}' ({})", checkpoint_path.string(),
        c.trainer.epoch.epoch >= 0 ? fmt::format("step {}, within epoch {}", c.trainer.step, c.trainer.epoch.epoch + 1)
                                   : fmt::format("end of epoch {}", first_epoch));
    log(fmt::format("resuming '{}' after epoch {}{} (step {})", run_dir.string(), first_epoch,
                    c.trainer.epoch.epoch >= 0
                        ? fmt::format(" and {} steps of epoch {}", c.trainer.epoch.batches, c.trainer.epoch.epoch + 1)
                        : "",
                    c.trainer.step));
  }
  MetricsFile metrics(metrics_path, metrics_bytes);
  const auto wall_s = [&] { return (wall_before_ms + wall.elapsed_ms()) / 1000; };

  log(
      fmt::format("{} on {}: {} classes, {} train / {} test images, batch {}, {}x{}, {} threads; {} for {} epochs "
                  "of {} steps{}",
                  m.name, d.name, num_classes, d.train.size(), d.test.size(), a.batch_size, a.input_size, a.input_size,
                  ctx.threads(), a.train_type, a.num_epochs, steps_per_epoch,
                  !is_elastic(type) ? ""
                  : a.deadline_s    ? fmt::format(", deadline {:.0f} s", *a.deadline_s)
                                    : fmt::format(", rho {}", a.rho)));

  Stopwatch epoch_clock;
  int current_epoch = 0;
  trainer.log = log;
  trainer.on_selection = [&](const SelectionRecord& r) {
    json j = to_json(r);
    j["type"] = "selection";
    j["step"] = trainer.step();
    j["wall_time"] = wall_s();
    metrics.write(j);
  };
  trainer.on_step = [&](std::uint64_t step, double loss, std::int64_t correct, std::int64_t count) {
    window.add(loss, correct, count);
    running.add(loss, correct, count);
    const std::uint64_t done = step + 1;
    if (done % 200 == 0) {
      metrics.write({{"type", "train"},
                     {"epoch", current_epoch + 1},
                     {"step", done},
                     {"loss", window.loss()},
                     {"accuracy", 100 * window.accuracy()},
                     {"learning_rate", trainer.learning_rate()},
                     {"wall_time", wall_s()}});
      window = {};
    }
    const std::int64_t in_epoch = static_cast<std::int64_t>(done) - std::int64_t(current_epoch) * steps_per_epoch;
    if (!progress.due(in_epoch, steps_per_epoch)) return;  // no formatting on the steps nobody sees
    const double elapsed = epoch_clock.elapsed_ms() / 1000;
    const double per_step = elapsed / double(std::max<std::int64_t>(1, in_epoch));
    const double eta = per_step * double(steps_per_epoch - in_epoch) +
                       per_step * double(steps_per_epoch) * double(a.num_epochs - current_epoch - 1);
    progress.show(fmt::format("epoch {}/{} step {}/{} | {:.1f} img/s | loss {:.4f} | acc {:.2f}% | ETA {}",
                              current_epoch + 1, a.num_epochs, in_epoch, steps_per_epoch,
                              double(running.count) / std::max(1e-9, elapsed), running.loss(), 100 * running.accuracy(),
                              format_duration(eta)));
  };

  // A checkpoint of everything up to the last step: weights, trainer state (with
  // the epoch in progress, if any), the run record, and metrics.jsonl synced.
  const auto write_checkpoint = [&](int completed_epochs, const std::string& when) {
    const std::uintmax_t bytes = metrics.sync();
    json run{{"epoch", completed_epochs - 1},
             {"best_test_accuracy", best},
             {"train_ms", train_ms},
             {"wall_ms", wall_before_ms + wall.elapsed_ms()},
             {"epochs", epochs},
             {"metrics_bytes", bytes},
             {"config", config},
             {"profile_key", profile ? profile->to_json()["key"] : json()}};
    const TrainerState state = trainer.state();
    if (state.epoch.epoch >= 0) {
      run["window"] = to_json(window);
      run["running"] = to_json(running);
    }
    save_checkpoint(checkpoint_path, m.params(), state, run);
    last_checkpoint = fmt::format("'{}' ({})", checkpoint_path.string(), when);
  };
  // Periodic checkpoints within epochs (--checkpoint_every), at step boundaries.
  std::uint64_t checkpoint_step = trainer.step();
  double checkpoint_ms = trainer.training_ms();
  trainer.after_step = [&] {
    const bool due =
        checkpoint_every.steps > 0
            ? trainer.step() - checkpoint_step >= std::uint64_t(checkpoint_every.steps)
            : checkpoint_every.seconds > 0 && trainer.training_ms() - checkpoint_ms >= 1000 * checkpoint_every.seconds;
    if (!due) return;
    write_checkpoint(current_epoch, fmt::format("step {}, within epoch {}", trainer.step(), current_epoch + 1));
    checkpoint_step = trainer.step();
    checkpoint_ms = trainer.training_ms();
  };
  trainer.stop = [] { return g_stop_signal != 0; };
  // After a stop request: the checkpoint is written, the way back printed.
  const auto stopped = [&] {
    const int signo = g_stop_signal;
    progress.finish();
    log(fmt::format("stopped by {} after step {}: checkpoint {} written; continue with:\n  {}{}",
                    signo == SIGINT ? "SIGINT" : "SIGTERM", trainer.step(), checkpoint_path.string(),
                    a.command.empty() ? "the same command" : a.command, a.resume ? "" : " --resume"));
    return 128 + signo;
  };

  for (int epoch = first_epoch; epoch < a.num_epochs; ++epoch) {
    current_epoch = epoch;
    if (trainer.epoch_in_progress() != epoch) window = running = {};  // (a resumed epoch keeps its partial windows)
    epoch_clock.reset();
    EpochRecord r;
    try {
      r = trainer.train_epoch(train, epoch);
    } catch (const NonFiniteLoss& e) {
      progress.finish();
      if (last_checkpoint.empty()) fail("{}; no checkpoint was written yet", e.what());
      fail("{}; the last good checkpoint is {}", e.what(), last_checkpoint);
    }
    if (!r.complete) {  // a stop request between two steps
      write_checkpoint(epoch, fmt::format("step {}, within epoch {}", trainer.step(), epoch + 1));
      return stopped();
    }
    progress.finish();
    train_ms += r.train_ms;
    const Metrics t = data::evaluate(m, test_loader);
    const double acc = 100 * t.accuracy();
    best = std::max(best, acc);
    metrics.write({{"type", "train_epoch"},
                   {"epoch", epoch + 1},
                   {"step", trainer.step()},
                   {"loss", r.train.loss()},
                   {"accuracy", 100 * r.train.accuracy()},
                   {"learning_rate", trainer.learning_rate()},
                   {"epoch_time", r.train_ms / 1000},
                   {"data_wait", r.data_wait_ms / 1000},
                   {"measured_share", r.measured_share >= 0 ? json(r.measured_share) : json()},
                   {"wall_time", wall_s()}});
    metrics.write({{"type", "test"},
                   {"epoch", epoch + 1},
                   {"step", trainer.step()},
                   {"loss", t.loss()},
                   {"accuracy", acc},
                   {"train_time", train_ms / 1000},
                   {"wall_time", wall_s()}});
    epochs.push_back({{"epoch", epoch + 1},
                      {"train_loss", r.train.loss()},
                      {"train_accuracy", 100 * r.train.accuracy()},
                      {"test_loss", t.loss()},
                      {"test_accuracy", acc},
                      {"epoch_time", r.train_ms / 1000}});
    log(fmt::format("epoch {}/{}: test loss {:.4f}, accuracy {:.2f}% (best {:.2f}%)", epoch + 1, a.num_epochs, t.loss(),
                    acc, best));
    write_checkpoint(epoch + 1, fmt::format("end of epoch {}", epoch + 1));
    checkpoint_step = trainer.step();
    checkpoint_ms = trainer.training_ms();
    if (g_stop_signal) return stopped();  // it came during the evaluation or the checkpoint
  }
  if (a.save_model) io::save_weights(m.params(), run_dir / "model.safetensors");

  const json summary{{"run_name", a.run_name},
                     {"model_name", a.model_name},
                     {"dataset_name", a.dataset_name},
                     {"train_type", a.train_type},
                     {"rho", a.rho},
                     {"deadline_s", a.deadline_s ? json(*a.deadline_s) : json()},
                     {"rho_per_selection", rho_per_selection(trainer.selections())},
                     {"num_epochs", a.num_epochs},
                     {"best_test_accuracy", best},
                     {"training_time_h", train_ms / 3.6e6},
                     {"epochs", epochs},
                     {"selections", trainer.selections().size()},
                     {"config", config}};
  io::write_durably(run_dir / "summary.json", summary.dump(1) + "\n");
  log(fmt::format("Best test accuracy: {:.2f}%", best));
  log(fmt::format("Total training time: {:.4f} h ({:.1f} s, validation excluded)", train_ms / 3.6e6, train_ms / 1000));
  log(fmt::format("metrics: {}, summary: {}", metrics_path.string(), (run_dir / "summary.json").string()));
  return 0;
}

int guarded(const std::function<int()>& f) {
  try {
    return f();
  } catch (const UsageError& e) {
    std::fflush(stdout);
    fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}

int example_main(int argc, char** argv, const std::string& model, const std::string& dataset) {
  TrainArgs a;
  a.model_name = model;
  a.dataset_name = dataset;
  CLI::App app{fmt::format("Fine-tune {} on {} (every flag of `elastic train`)", model, dataset)};
  add_train_options(app, a);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  a.command = quote_command(argc, argv);
  return guarded([&] { return run_train(a); });
}

std::string quote_command(int argc, char** argv) {
  std::string out;
  for (int i = 0; i < argc; ++i) {
    const std::string w = argv[i];
    const bool plain = !w.empty() && w.find_first_not_of(
                                         "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                         "0123456789_./=:,+-") == std::string::npos;
    if (i) out += ' ';
    if (plain) {
      out += w;
    } else {
      out += '\'';
      for (char c : w) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
      out += '\'';
    }
  }
  return out;
}

}  // namespace elastic::cli
