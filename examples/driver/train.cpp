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
  c.add_option("--model_name", a.model_name, "resnet50, vgg16, mobilenetv2, vit, or an ONNX classifier (PATH.onnx)")
      ->capture_default_str();
  c.add_option("--head", a.head,
               "an ONNX model's classifier (a Gemm's layer or node name) [default: the Gemm feeding the output]");
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
  c.add_option_function<double>(
       "--memory_budget", [&a](const double& mib) { a.memory_budget_mib = mib; },
       "keep the process's peak resident memory within this many MiB: the selection maximizes importance under "
       "the time budget and this memory budget together; elastic types")
      ->check(cli::positive);
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
  add_precision_option(c, a.precision);
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
          {"memory_budget_mib", a.memory_budget_mib ? json(*a.memory_budget_mib) : json()},
          {"time_control", a.time_control},
          {"classes", a.classes},
          {"seed", a.seed},
          {"steps_per_epoch", steps_per_epoch},
          {"dropout", a.dropout ? json(*a.dropout) : json()},
          {"bn_batch_stats", a.bn_batch_stats},
          {"no_augment", a.no_augment},
          {"precision", a.precision}};
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

// `elastic train` as a recipe: run() takes the steps below in order, each a
// method; what one step makes, the next ones read from the members.
class TrainRun {
 public:
  explicit TrainRun(const TrainArgs& a) : a_(a) {}
  TrainRun(const TrainRun&) = delete;
  TrainRun& operator=(const TrainRun&) = delete;

  int run() {
    resolve_settings();
    if (a_.memory_budget_mib) return_freed_memory();  // before the data and the model take memory
    open_data();
    build_model();
    check_resume_settings();
    take_profile();
    topt_.other_data_bytes = test_loader_->memory_bytes();  // the evaluation loader's ring, filled ahead
    trainer_.emplace(*m_, topt_, steps_per_epoch_, profile_);
    if (a_.resume) resume();
    connect_trainer();
    for (int epoch = first_epoch_; epoch < a_.num_epochs; ++epoch)
      if (const int stopped = train_epoch(epoch)) return stopped;
    write_summary();
    return 0;
  }

 private:
  // Every flag checked before anything slow runs: the Trainer's own checks of
  // its options, then what only the driver knows (run directory, checkpoint).
  void resolve_settings() {
    topt_ = {.type = parse_train_type(a_.train_type),
             .num_epochs = a_.num_epochs,
             .interval = a_.interval,
             .rho = a_.rho,
             .optimizer = a_.optimizer,
             .learning_rate = a_.learning_rate,
             .weight_decay = a_.weight_decay,
             .deadline_s = a_.deadline_s,
             .memory_budget_mib = a_.memory_budget_mib,
             .writes_checkpoints = true};  // at every epoch end at least
    topt_.control.correct = a_.time_control == "on";
    if (a_.deadline_s && a_.rho_given) usage_fail("--rho and --deadline exclude each other: give one");
    topt_.check();
    precision_ = run_precision(a_.precision);
    if (a_.run_name.empty() || a_.run_name.find('/') != std::string::npos)
      usage_fail("--run_name '{}' must be a non-empty name without '/'", a_.run_name);
    checkpoint_every_ = parse_checkpoint_every(a_.checkpoint_every);
    if (a_.resume && !fs::exists(checkpoint_path_))
      usage_fail("--resume: no checkpoint '{}' (the run ended or was killed before its first one)",
                 checkpoint_path_.string());
    if (!a_.resume && fs::exists(metrics_path_))
      usage_fail("run directory '{}' already holds a run: pass --resume to continue it or choose another --run_name",
                 run_dir_.string());
    fs::create_directories(run_dir_);
    topt_.spill_dir = run_dir_;  // the probe's spill file, when the memory budget needs one (unlinked at once)
    if (a_.save_txt) {
      text_log_.reset(std::fopen((run_dir_ / "log.txt").c_str(), a_.resume ? "ab" : "wb"));
      if (!text_log_) fail("cannot write '{}'", (run_dir_ / "log.txt").string());
    }
  }

  void log(const std::string& line) {
    progress_.print_line(line);
    if (text_log_) {
      fmt::print(text_log_.get(), "{}\n", line);
      std::fflush(text_log_.get());
    }
  }

  void open_data() {
    data::DatasetOptions dopt;
    if (!a_.classes.empty()) dopt.classes = data::parse_class_list(a_.classes);
    d_.emplace(data::open_dataset(a_.dataset_name, a_.data_dir, dopt));
    num_classes_ = a_.num_classes ? a_.num_classes : d_->num_classes();
    if (num_classes_ < d_->num_classes())
      usage_fail("--num_classes {} is smaller than the {} classes of {}", num_classes_, d_->num_classes(), d_->name);
  }

  // The model, its weights, and the loaders that feed it.
  void build_model() {
    m_.emplace(build_named_model(a_.model_name, ctx_,
                                 {.num_classes = num_classes_,
                                  .input_size = a_.input_size,
                                  .batch = a_.batch_size,
                                  .dropout = a_.dropout,
                                  .seed = a_.seed,
                                  .precision = precision_},
                                 a_.head, [this](const std::string& line) { log(line); }));
    m_->set_batch_stats(a_.bn_batch_stats);
    if (a_.weights.empty() && is_onnx_model(a_.model_name)) {
      // the file's initializers are its weights
    } else if (a_.weights.empty()) {
      // Fine-tuning settings on an untrained model learn little: say so before any time is spent.
      log(fmt::format(
          "warning: no --weights: {} starts from random initialization{}; give --weights FILE to "
          "fine-tune a pretrained model{}",
          m_->name, a_.bn_batch_stats ? "" : " with its batch-norm statistics frozen at 0 mean and unit variance",
          a_.bn_batch_stats ? "" : ", or --bn_batch_stats (and a larger --learning_rate) to train from scratch"));
    } else {
      const auto report = io::load_weights(m_->params(), a_.weights, {.skip_prefixes = m_->head_prefixes});
      log(fmt::format("loaded {} tensors from '{}' (head {} left as initialized)", report.loaded, a_.weights,
                      fmt::join(m_->head_prefixes, ", ")));
    }
    data::LoaderOptions train_options = data::loader_options_for(*m_, true, a_.seed);
    train_options.workers = a_.workers;
    train_options.augment = !a_.no_augment;
    train_options.skip_bad = a_.skip_bad;
    data::LoaderOptions test_options = data::loader_options_for(*m_, false, a_.seed);
    test_options.batch = 2 * a_.batch_size;
    test_options.workers = a_.workers;
    test_options.skip_bad = a_.skip_bad;
    train_loader_.emplace(d_->train, train_options);
    test_loader_.emplace(d_->test, test_options);
    train_loader_->warn = test_loader_->warn = [this](const std::string& w) { log("warning: " + w); };
    steps_per_epoch_ =
        a_.steps_per_epoch ? std::min(a_.steps_per_epoch, train_loader_->batches()) : train_loader_->batches();
    train_.emplace(*train_loader_, steps_per_epoch_);
    config_ = run_config(a_, num_classes_, steps_per_epoch_);
    info_ = model_info(*m_, a_.model_name, a_.input_size, d_->class_names);
  }
  // A resumed run must have been started with the same settings; they decide
  // whether anything else in the checkpoint can match.
  void check_resume_settings() {
    if (!a_.resume) return;
    const io::SafetensorsFile file(checkpoint_path_);
    const auto state = file.metadata().find("elastic_state");
    if (state == file.metadata().end())
      fail("'{}' is not a checkpoint: no elastic_state metadata", checkpoint_path_.string());
    json was = parse_checkpoint_state(state->second, checkpoint_path_).run.value("config", json::object());
    if (!was.contains("precision")) was["precision"] = "fp32";  // runs started before bf16 existed
    for (const auto& [key, value] : config_.items())
      if (!was.contains(key) || was[key] != value)
        usage_fail("--resume: the run was started with {} {} but this command has {}", key,
                   was.contains(key) ? was[key].dump() : "(none)", value.dump());
  }

  // Elastic types: the profile given, the run's own (on resume), or a new one
  // taken on the first batch with the run's optimizer and kept in the run directory.
  void take_profile() {
    if (!is_elastic(topt_.type)) return;
    const fs::path saved = run_dir_ / "profile.json";
    const auto opt = make_optimizer(a_.optimizer, m_->name, a_.weight_decay);
    if (!a_.profile.empty() || (a_.resume && fs::exists(saved))) {
      const fs::path from = a_.profile.empty() ? saved : fs::path(a_.profile);
      profile_ = Profile::load(from);
      profile_->check_matches(profile_key(*m_, ctx_.threads(), *opt), from.string());
      return;
    }
    log(fmt::format("profiling {} (batch {}, {}x{}, {} threads); `elastic profile --out F` and --profile F reuse one",
                    m_->name, a_.batch_size, a_.input_size, a_.input_size, ctx_.threads()));
    train_loader_->start_epoch(0, false);
    train_loader_->load(*m_, 0);
    profile_ = TimingProfiler<>().run(*m_, ctx_.threads(), std::vector<bool>(m_->params().size(), true), *opt);
    profile_->save(saved);
  }

  // Weights, trainer state and the run record from the checkpoint.
  void resume() {
    const Checkpoint c = load_checkpoint(checkpoint_path_, m_->params());
    try {
      first_epoch_ = json_integer<int>(c.run.at("epoch"), "epoch") + 1;
      best_ = json_number(c.run.at("best_test_accuracy"), "best_test_accuracy");
      train_ms_ = json_number(c.run.at("train_ms"), "train_ms");
      wall_before_ms_ = json_number(c.run.at("wall_ms"), "wall_ms");
      epochs_ = c.run.at("epochs");
      metrics_bytes_ = json_integer<std::uintmax_t>(c.run.at("metrics_bytes"), "metrics_bytes");
      if (c.run.contains("window")) {  // a checkpoint within an epoch: the partial metrics windows
        window_ = metrics_from_json(c.run.at("window"));
        running_ = metrics_from_json(c.run.at("running"));
      }
      if (!epochs_.is_array()) fail("epochs malformed");
    } catch (const std::exception& e) {
      fail("'{}': malformed run record: {}", checkpoint_path_.string(), e.what());
    }
    trainer_->restore(c.trainer);
    const bool within = c.trainer.epoch.epoch >= 0;
    last_checkpoint_ =
        fmt::format("'{}' ({})", checkpoint_path_.string(),
                    within ? fmt::format("step {}, within epoch {}", c.trainer.step, c.trainer.epoch.epoch + 1)
                           : fmt::format("end of epoch {}", first_epoch_));
    log(fmt::format(
        "resuming '{}' after epoch {}{} (step {})", run_dir_.string(), first_epoch_,
        within ? fmt::format(" and {} steps of epoch {}", c.trainer.epoch.batches, c.trainer.epoch.epoch + 1) : "",
        c.trainer.step));
  }

  double wall_s() const { return (wall_before_ms_ + wall_.elapsed_ms()) / 1000; }

  // The metrics file, the header line, and the trainer's callbacks: selection
  // records, per-step metrics and progress, periodic checkpoints, stop requests.
  void connect_trainer() {
    metrics_.emplace(metrics_path_, metrics_bytes_);
    log(
        fmt::format("{} on {}: {} classes, {} train / {} test images, batch {}, {}x{}, {} threads; {} for {} epochs "
                    "of {} steps{}{}",
                    m_->name, d_->name, num_classes_, d_->train.size(), d_->test.size(), a_.batch_size, a_.input_size,
                    a_.input_size, ctx_.threads(), a_.train_type, a_.num_epochs, steps_per_epoch_,
                    !is_elastic(topt_.type) ? ""
                    : a_.deadline_s         ? fmt::format(", deadline {:.0f} s", *a_.deadline_s)
                                            : fmt::format(", rho {}", a_.rho),
                    a_.memory_budget_mib ? fmt::format(", memory budget {:.0f} MiB", *a_.memory_budget_mib) : ""));
    Trainer& t = *trainer_;
    t.log = [this](const std::string& line) { log(line); };
    t.on_selection = [this](const SelectionRecord& r) {
      json j = to_json(r);
      j["type"] = "selection";
      j["step"] = trainer_->step();
      j["wall_time"] = wall_s();
      metrics_->write(j);
    };
    t.on_step = [this](std::uint64_t step, double loss, std::int64_t correct, std::int64_t count) {
      after_step(step, loss, correct, count);
    };
    checkpoint_step_ = t.step();
    checkpoint_ms_ = t.training_ms();
    t.after_step = [this] {
      const Trainer& tr = *trainer_;
      const bool due =
          checkpoint_every_.steps > 0
              ? tr.step() - checkpoint_step_ >= std::uint64_t(checkpoint_every_.steps)
              : checkpoint_every_.seconds > 0 && tr.training_ms() - checkpoint_ms_ >= 1000 * checkpoint_every_.seconds;
      if (due) write_checkpoint(current_epoch_, fmt::format("step {}, within epoch {}", tr.step(), current_epoch_ + 1));
    };
    t.stop = [] { return g_stop_signal != 0; };
  }

  // Every 200 steps a "train" line of the mean over them; the progress line.
  void after_step(std::uint64_t step, double loss, std::int64_t correct, std::int64_t count) {
    window_.add(loss, correct, count);
    running_.add(loss, correct, count);
    const std::uint64_t done = step + 1;
    if (done % 200 == 0) {
      metrics_->write({{"type", "train"},
                       {"epoch", current_epoch_ + 1},
                       {"step", done},
                       {"loss", window_.loss()},
                       {"accuracy", 100 * window_.accuracy()},
                       {"learning_rate", trainer_->learning_rate()},
                       {"wall_time", wall_s()}});
      window_ = {};
    }
    const std::int64_t in_epoch = static_cast<std::int64_t>(done) - std::int64_t(current_epoch_) * steps_per_epoch_;
    if (!progress_.due(in_epoch, steps_per_epoch_)) return;  // no formatting on the steps nobody sees
    const double elapsed = epoch_clock_.elapsed_ms() / 1000;
    const double per_step = elapsed / double(std::max<std::int64_t>(1, in_epoch));
    const double eta = per_step * double(steps_per_epoch_ - in_epoch) +
                       per_step * double(steps_per_epoch_) * double(a_.num_epochs - current_epoch_ - 1);
    progress_.show(fmt::format("epoch {}/{} step {}/{} | {:.1f} img/s | loss {:.4f} | acc {:.2f}% | ETA {}",
                               current_epoch_ + 1, a_.num_epochs, in_epoch, steps_per_epoch_,
                               double(running_.count) / std::max(1e-9, elapsed), running_.loss(),
                               100 * running_.accuracy(), format_duration(eta)));
  }

  // A checkpoint of everything up to the last step: weights, trainer state
  // (with the epoch in progress, if any), the run record, metrics.jsonl synced.
  void write_checkpoint(int completed_epochs, const std::string& when) {
    const std::uintmax_t bytes = metrics_->sync();
    json run{{"epoch", completed_epochs - 1},
             {"best_test_accuracy", best_},
             {"train_ms", train_ms_},
             {"wall_ms", wall_before_ms_ + wall_.elapsed_ms()},
             {"epochs", epochs_},
             {"metrics_bytes", bytes},
             {"config", config_},
             {"profile_key", profile_ ? profile_->to_json()["key"] : json()}};
    const TrainerState state = trainer_->state();
    if (state.epoch.epoch >= 0) {
      run["window"] = to_json(window_);
      run["running"] = to_json(running_);
    }
    save_checkpoint(checkpoint_path_, m_->params(), state, run, info_);
    last_checkpoint_ = fmt::format("'{}' ({})", checkpoint_path_.string(), when);
    checkpoint_step_ = trainer_->step();
    checkpoint_ms_ = trainer_->training_ms();
  }

  // After a stop request: the checkpoint is written; prints the way back.
  int stopped() {
    const int signo = g_stop_signal;
    progress_.finish();
    log(fmt::format("stopped by {} after step {}: checkpoint {} written; continue with:\n  {}{}",
                    signo == SIGINT ? "SIGINT" : "SIGTERM", trainer_->step(), checkpoint_path_.string(),
                    a_.command.empty() ? "the same command" : a_.command, a_.resume ? "" : " --resume"));
    return 128 + signo;
  }

  // One epoch: training, evaluation, metrics, checkpoint. Returns the exit
  // code of a stop request, 0 to go on.
  int train_epoch(int epoch) {
    current_epoch_ = epoch;
    if (trainer_->epoch_in_progress() != epoch) window_ = running_ = {};  // (a resumed epoch keeps its windows)
    epoch_clock_.reset();
    EpochRecord r;
    try {
      r = trainer_->train_epoch(*train_, epoch);
    } catch (const NonFiniteLoss& e) {
      progress_.finish();
      if (last_checkpoint_.empty()) fail("{}; no checkpoint was written yet", e.what());
      fail("{}; the last good checkpoint is {}", e.what(), last_checkpoint_);
    }
    if (!r.complete) {  // a stop request between two steps
      write_checkpoint(epoch, fmt::format("step {}, within epoch {}", trainer_->step(), epoch + 1));
      return stopped();
    }
    progress_.finish();
    train_ms_ += r.train_ms;
    const Metrics t = data::evaluate(*m_, *test_loader_);
    const double acc = 100 * t.accuracy();
    best_ = std::max(best_, acc);
    metrics_->write({{"type", "train_epoch"},
                     {"epoch", epoch + 1},
                     {"step", trainer_->step()},
                     {"loss", r.train.loss()},
                     {"accuracy", 100 * r.train.accuracy()},
                     {"learning_rate", trainer_->learning_rate()},
                     {"epoch_time", r.train_ms / 1000},
                     {"data_wait", r.data_wait_ms / 1000},
                     {"measured_share", r.measured_share >= 0 ? json(r.measured_share) : json()},
                     {"wall_time", wall_s()}});
    metrics_->write({{"type", "test"},
                     {"epoch", epoch + 1},
                     {"step", trainer_->step()},
                     {"loss", t.loss()},
                     {"accuracy", acc},
                     {"train_time", train_ms_ / 1000},
                     {"wall_time", wall_s()}});
    epochs_.push_back({{"epoch", epoch + 1},
                       {"train_loss", r.train.loss()},
                       {"train_accuracy", 100 * r.train.accuracy()},
                       {"test_loss", t.loss()},
                       {"test_accuracy", acc},
                       {"epoch_time", r.train_ms / 1000}});
    log(fmt::format("epoch {}/{}: test loss {:.4f}, accuracy {:.2f}% (best {:.2f}%)", epoch + 1, a_.num_epochs,
                    t.loss(), acc, best_));
    write_checkpoint(epoch + 1, fmt::format("end of epoch {}", epoch + 1));
    return g_stop_signal ? stopped() : 0;  // a stop request during the evaluation or the checkpoint
  }

  // The final weights (--save_model), summary.json and the closing lines.
  void write_summary() {
    if (a_.save_model) io::save_weights(m_->params(), run_dir_ / "model.safetensors", info_);
    const json summary{{"run_name", a_.run_name},
                       {"model_name", a_.model_name},
                       {"dataset_name", a_.dataset_name},
                       {"train_type", a_.train_type},
                       {"rho", a_.rho},
                       {"deadline_s", a_.deadline_s ? json(*a_.deadline_s) : json()},
                       {"memory_budget_mib", a_.memory_budget_mib ? json(*a_.memory_budget_mib) : json()},
                       {"peak_rss_mib", double(peak_resident_bytes()) / kMiB},
                       {"rho_per_selection", rho_per_selection(trainer_->selections())},
                       {"num_epochs", a_.num_epochs},
                       {"best_test_accuracy", best_},
                       {"training_time_h", train_ms_ / 3.6e6},
                       {"epochs", epochs_},
                       {"selections", trainer_->selections().size()},
                       {"config", config_}};
    io::write_durably(run_dir_ / "summary.json", summary.dump(1) + "\n");
    log(fmt::format("Best test accuracy: {:.2f}%", best_));
    log(fmt::format("Total training time: {:.4f} h ({:.1f} s, validation excluded)", train_ms_ / 3.6e6,
                    train_ms_ / 1000));
    log(fmt::format("metrics: {}, summary: {}", metrics_path_.string(), (run_dir_ / "summary.json").string()));
  }

  const TrainArgs& a_;
  const fs::path run_dir_ = fs::path(a_.log_dir) / a_.run_name;
  const fs::path checkpoint_path_ = run_dir_ / "checkpoint.safetensors", metrics_path_ = run_dir_ / "metrics.jsonl";
  const StopSignals stop_signals_;
  const Stopwatch wall_;
  Progress progress_;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> text_log_{nullptr, &std::fclose};
  TrainerOptions topt_;
  CheckpointEvery checkpoint_every_;

  std::optional<data::Dataset> d_;
  std::int64_t num_classes_ = 0;
  Context ctx_{a_.threads};
  Precision precision_ = Precision::fp32;
  std::optional<Model> m_;
  std::optional<data::Loader> train_loader_, test_loader_;
  std::optional<data::CappedLoader> train_;
  std::int64_t steps_per_epoch_ = 0;
  json config_;
  io::ModelInfo info_;  // written into the checkpoints and the final weights
  std::optional<Profile> profile_;
  std::optional<Trainer> trainer_;

  // The run record (kept in checkpoints).
  int first_epoch_ = 0;
  double best_ = 0, train_ms_ = 0, wall_before_ms_ = 0;
  json epochs_ = json::array();
  Metrics window_, running_;  // the last 200 steps' metrics; the epoch's so far
  std::optional<std::uintmax_t> metrics_bytes_;
  std::optional<MetricsFile> metrics_;
  std::string last_checkpoint_;  // the newest checkpoint of this run, for messages

  int current_epoch_ = 0;
  Stopwatch epoch_clock_;
  std::uint64_t checkpoint_step_ = 0;  // where the last checkpoint was (--checkpoint_every counts from it)
  double checkpoint_ms_ = 0;
};

}  // namespace

int run_train(const TrainArgs& a) { return TrainRun(a).run(); }

int run_main(CLI::App& app, int argc, char** argv, const std::function<int()>& run) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help: prints it
    fmt::print(stderr, "error: {}\n", e.what());     // one line naming the flag or value
    return 2;
  }
  try {
    return run();
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
  return run_main(app, argc, argv, [&] {
    a.command = quote_command(argc, argv);
    return run_train(a);
  });
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
