// The Trainer: the training loop of docs/method.md with every training type of
// the reference as a policy that yields a selection of params:
//   full_training, traditional_tl_training (head only), bn_plus_bias_training
//   (norm scales/shifts, biases and head), elastic_training (loss-drop
//   importance + DP selection under the time budget), its weight-magnitude and
//   gradient-magnitude variants, and prunetrain (full training with an L1
//   penalty on kernel weights).
// Elastic types re-select at the start of every `interval`-th epoch on the
// epoch's first batch: importance from a probe, then the DP under the budget
// rho * T(all) - T_fwd(frozen) of the step time model (profile.hpp), corrected
// as the run goes by the steps it measures (time_control.hpp): a window whose
// measured step strays from its prediction re-solves with the interval's
// importance. With a deadline instead of rho, rho is planned from the
// remaining training time and steps. docs/method.md has the whole loop.
#pragma once

#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "elastic/core/host_math.hpp"
#include "elastic/core/timer.hpp"
#include "elastic/method/dp_selector.hpp"
#include "elastic/method/importance_evaluator.hpp"
#include "elastic/method/time_control.hpp"
#include "elastic/method/timing_profiler.hpp"
#include "elastic/method/training_memory.hpp"
#include "elastic/method/units.hpp"
#include "elastic/optim/schedule.hpp"
#include "elastic/train/loop.hpp"
#include "elastic/train/step.hpp"

namespace elastic {

enum class TrainType {
  full_training,
  traditional_tl_training,
  bn_plus_bias_training,
  elastic_training,
  elastic_training_weight_magnitude,
  elastic_training_grad_magnitude,
  prunetrain
};

inline constexpr std::string_view kTrainTypeNames[] = {
    "full_training",    "traditional_tl_training",           "bn_plus_bias_training",
    "elastic_training", "elastic_training_weight_magnitude", "elastic_training_grad_magnitude",
    "prunetrain"};

inline std::string_view name_of(TrainType t) { return kTrainTypeNames[static_cast<int>(t)]; }

inline TrainType parse_train_type(std::string_view s) {
  for (int i = 0; i < 7; ++i)
    if (s == kTrainTypeNames[i]) return static_cast<TrainType>(i);
  usage_fail("--train_type '{}' is not one of {}", s, fmt::join(kTrainTypeNames, ", "));
}

inline bool is_elastic(TrainType t) {
  return t == TrainType::elastic_training || t == TrainType::elastic_training_weight_magnitude ||
         t == TrainType::elastic_training_grad_magnitude;
}

struct TrainerOptions {
  TrainType type = TrainType::elastic_training;
  int num_epochs = 12;
  int interval = 4;  // epochs between re-selections
  double rho = 0.533;
  std::string optimizer;  // "sgd" (SGDW) or "adam"; empty: the reference's choice (Adam for vit, else SGDW)
  float learning_rate = 1e-4f;
  // Decoupled weight decay, per step weight_decay * lr (see SGDW). Unset: the
  // reference's, 5e-4 with SGDW and none with Adam; set with Adam, it makes AdamW.
  std::optional<float> weight_decay;
  float l1 = 1e-4f;  // prunetrain's penalty on kernel weights
  int dp_resolution = 1000;
  // No seed: what is random in training is seeded where it is drawn, the
  // model's initialization and dropout (ModelOptions::seed) and the batches'
  // order and augmentation (data::LoaderOptions::seed).
  // Elastic types: finish training (as EpochRecord::train_ms counts it) within
  // this many seconds, planning rho instead of holding `rho`.
  std::optional<double> deadline_s;
  TimeControlOptions control;
  // Elastic types: the process's peak resident memory stays within this many MiB
  // (TrainingMemory's model, every candidate checked exactly before it is installed);
  // `memory_resolution` steps of the budget in the DP's memory dimension.
  std::optional<double> memory_budget_mib;
  int memory_resolution = 1000;
  // The share of the budget held back for what the model does not see (threads' stacks, the
  // allocator's slack, logs): the plans fill (1 - memory_margin) of it. TrainingMemory's
  // predictions were 0.5-3.1% under the measured peaks (benchmarks/RESULTS.md).
  double memory_margin = 0.04;
  // The run writes checkpoints: each takes a copy of the optimizer's slots, counted in the budget.
  bool writes_checkpoints = false;
  // With a memory budget: bytes the caller's own buffers hold besides the training batch source's
  // (an evaluation loader's ring), counted as data.
  std::int64_t other_data_bytes = 0;
  // Where the importance probe may spill the weights it moves when the memory budget has no room
  // for them (a temporary file, unlinked at once; empty: the system's temporary directory).
  std::filesystem::path spill_dir;

  // Refuses options that cannot work together (UsageError naming the flag),
  // before anything slow runs: the Trainer's constructor calls it, and a
  // driver may call it first.
  void check() const {
    if (!(rho > 0 && rho <= 1)) usage_fail("--rho must be in (0, 1], got {}", rho);
    if (interval < 1) usage_fail("--interval must be at least 1, got {}", interval);
    if (num_epochs < 1) usage_fail("--num_epochs must be at least 1, got {}", num_epochs);
    if (!(learning_rate > 0)) usage_fail("--learning_rate must be positive, got {}", learning_rate);
    check_optimizer_name(optimizer);
    if (deadline_s && !(*deadline_s > 0 && std::isfinite(*deadline_s)))
      usage_fail("--deadline must be a positive time, got {} s", *deadline_s);
    if (deadline_s && !is_elastic(type))
      usage_fail("--deadline needs an elastic training type (it plans rho), not {}", name_of(type));
    if (deadline_s && !control.correct)
      usage_fail("--deadline plans with measured step times: it needs time control on (--time_control on)");
    if (memory_budget_mib && !(*memory_budget_mib > 0 && std::isfinite(*memory_budget_mib)))
      usage_fail("--memory_budget must be a positive size in MiB, got {}", *memory_budget_mib);
    if (!(memory_margin >= 0 && memory_margin < 0.5))
      usage_fail("the memory margin must be in [0, 0.5), got {}", memory_margin);
    if (memory_budget_mib && !is_elastic(type))
      usage_fail("--memory_budget needs an elastic training type (it selects what to train), not {}", name_of(type));
    if (memory_resolution < 1) usage_fail("the memory resolution must be at least 1, got {}", memory_resolution);
  }
};

// One installed selection, as logged when it is replaced or its interval ends.
struct SelectionRecord {
  int epoch = 0;
  std::uint64_t step = 0;        // steps taken before it was installed
  std::string reason = "probe";  // probe (new importance), correction (time model), deadline (new rho)
  double rho = 0;                // the rho it was solved for
  std::vector<bool> unit_mask;
  double importance = 0;                // total importance of the selection
  double predicted_share = 1;           // T(m) / T(all) under the model when it was solved
  std::vector<double> unit_importance;  // a probe's: the interval's per-unit importance (else empty)
  // A probe's: where those scores came from: "measured" (the probe's own), "previous" (kept:
  // none of the probe's own was above 0) or "grad_magnitude" (the first probe's stand-in then).
  std::string scores;
  std::vector<std::string> selected_units;
  double selection_ms = 0;  // the importance probe and the DP (counted in the epoch's training time)
  // With a memory budget: the run's predicted peak under it (training's or the next probe's,
  // MiB) and whether frozen weights' copies were kept; 0 without a budget.
  double memory_mib = 0;
  bool weight_copies = true;
  // With a memory budget: the predicted peak while the DP solved (its tables and what the plan
  // before it held between steps, MiB) and the memory resolution it solved at (the configured
  // one, or coarser where its tables would not fit otherwise).
  double solve_mib = 0;
  int memory_resolution = 0;
  // Its measurement windows (measured_share < 0: none completed): the means
  // over them of the measured step and of the full step under each window's
  // correction, and their ratio.
  double measured_share = -1;
  double measured_step_ms = 0;
  double full_step_ms = 0;
  std::int64_t windows = 0;
  std::int64_t steps = 0;  // steps it ran
};

// What a checkpoint must hold, beyond weights, for a resumed run to continue
// exactly as an uninterrupted one: the step (which fixes the learning rate and
// the dropout masks), the installed selection, the selection history and the
// optimizer's state. Batches depend only on (seed, epoch, position).
// The loss became NaN or infinite: training cannot continue from here.
class NonFiniteLoss : public Error {
 public:
  using Error::Error;
};

// The epoch in progress when a run stops between two of its steps (a stop
// request, a periodic checkpoint): what its EpochRecord has gathered so far.
struct EpochProgress {
  int epoch = -1;            // -1: none, the run is at an epoch boundary
  std::int64_t batches = 0;  // batches (steps) done of it
  Metrics train;
  double train_ms = 0, data_wait_ms = 0;
  double measured_ms = 0, full_ms = 0;  // over its completed measurement windows
  bool operator==(const EpochProgress&) const = default;
};

struct TrainerState {
  std::uint64_t step = 0;
  std::vector<bool> mask;                   // per param
  std::vector<SelectionRecord> selections;  // the last one is open (still installed) while open_selection
  OptimizerState optimizer;
  // Time control: the controller, the interval's importance, the rho in force
  // and the training time so far (for a deadline).
  ControlState control;
  std::vector<double> importance;
  double rho = 0;
  double train_ms = 0;
  bool open_selection = false;
  // The machine became too slow for the time budget (the deadline, or a given rho below
  // the smallest useful one after a correction): said once, trains on at the smallest.
  bool deadline_missed = false;
  EpochProgress epoch;
};

struct EpochRecord {
  int epoch = 0;
  double train_ms = 0;      // training only, no evaluation
  double data_wait_ms = 0;  // part of train_ms spent waiting for the batch source
  Metrics train;
  std::int64_t steps = 0;
  double measured_share = -1;  // elastic types: measured steps / corrected full steps over the epoch's windows
  bool complete = true;        // false: a stop request ended it early (Trainer::stop)
};

class Trainer {
 public:
  // `profile` is required by the elastic types (and checked against the model);
  // `steps_per_epoch` sizes the cosine schedule (and a deadline's plan).
  Trainer(Model& m, TrainerOptions o, std::int64_t steps_per_epoch, std::optional<Profile> profile = std::nullopt)
      : m_(m),
        o_(std::move(o)),
        units_(selection_units(*m.graph)),
        profile_(std::move(profile)),
        schedule_{o_.learning_rate, std::max<std::int64_t>(1, steps_per_epoch * o_.num_epochs)},
        dp_(o_.dp_resolution) {
    o_.check();
    if (o_.optimizer.empty()) o_.optimizer = default_optimizer(m.name);
    opt_ = make_optimizer(o_.optimizer, m.name, o_.weight_decay);
    if (is_elastic(o_.type)) {
      if (!profile_) fail("{} needs a timing profile of this model (elastic profile)", name_of(o_.type));
      profile_->check_matches(profile_key(m_, m_.graph->context().threads(), *opt_), "given");
      if (profile_->units.size() != units_.size())
        fail("the profile has {} units but model '{}' has {}", profile_->units.size(), m_.name, units_.size());
      control_.emplace(*profile_, o_.control);
      if (o_.memory_budget_mib) {
        // The probe's buffers, a checkpoint's and copies given up leave the process when freed.
        return_freed_memory();
        memory_.emplace(m_, opt_->slot_count(), o_.other_data_bytes, other_thread_kernels());
      }
      // Before any probe, the forward passes alone bound what a deadline can buy.
      const double forward_s = double(schedule_.total_steps) * profile_->t_fwd_frozen / 1000;
      if (o_.deadline_s && forward_s > *o_.deadline_s)
        usage_fail(
            "--deadline {:.1f} s cannot be met: the forward passes of {} steps alone take about {:.1f} s here; "
            "the shortest feasible deadline is longer than that",
            *o_.deadline_s, schedule_.total_steps, forward_s);
    }
    rho_ = o_.rho;
    mask_ = static_mask();
    m_.graph->select(mask_);
  }

  Trainer(const Trainer&) = delete;  // its time controller refers to its profile
  Trainer& operator=(const Trainer&) = delete;

  // Called with every selection when it is replaced or its interval ends, with
  // its measurements; empty by default.
  std::function<void(const SelectionRecord&)> on_selection;
  // Called after every step with its number and its batch's mean loss, correct and counted
  // samples. It may read params but not write them (see Graph::reuse_frozen_weights).
  std::function<void(std::uint64_t step, double loss, std::int64_t correct, std::int64_t count)> on_step;
  // Asked after every step: true ends the epoch there, incomplete (EpochRecord::complete),
  // with the state (state()) ready for a checkpoint that resumes at the next step.
  std::function<bool()> stop;
  // Called after every step, when state() describes the run up to that step
  // (e.g. to write a periodic checkpoint).
  std::function<void()> after_step;
  // The clock every training time is read from, in ms (tests inject a fake one).
  std::function<double()> clock = monotonic_ms;
  // One human-readable line per selection and per epoch; prints to stdout by default.
  std::function<void(const std::string&)> log = [](const std::string& line) { fmt::print("{}\n", line); };

  const std::vector<bool>& mask() const { return mask_; }
  Optimizer& optimizer() { return *opt_; }
  std::uint64_t step() const { return step_; }
  const std::vector<SelectionRecord>& selections() const { return selections_; }
  // The rho in force (with a deadline: the planned one) and the training time so far.
  double rho() const { return rho_; }
  // The interval's unit importance, from its probe (units it did not score have 0).
  const std::vector<double>& importance() const { return importance_; }
  double train_ms() const { return train_ms_; }
  // Training time so far, within an epoch too (cheap: for periodic checkpoints).
  double training_ms() const { return train_ms_ + (in_epoch_ ? clock() - epoch_start_ : 0); }
  // The epoch a resumed state is in the middle of (-1: none).
  int epoch_in_progress() const { return progress_.epoch; }
  const TimeController* controller() const { return control_ ? &*control_ : nullptr; }
  std::int64_t total_steps() const { return schedule_.total_steps; }

  // The learning rate of the next step (learning_rate_at: SGDW's along a cosine
  // over the run, Adam's constant).
  float learning_rate() const { return learning_rate_at(*opt_, schedule_, static_cast<std::int64_t>(step_)); }

  // Between epochs, or between two steps of one (from after_step, or after a
  // stop): the time of the epoch's running part is included.
  TrainerState state() const {
    const double running = in_epoch_ ? clock() - epoch_start_ : 0;
    EpochProgress progress = progress_;
    if (progress.epoch >= 0) progress.train_ms += running;
    return {step_,       mask_, selections_,         opt_->state(), control_ ? control_->state() : ControlState{},
            importance_, rho_,  train_ms_ + running, open_,         deadline_missed_,
            progress};
  }

  // Continues from a saved state (the model's weights restored separately).
  void restore(const TrainerState& s) {
    if (s.mask.size() != m_.params().size())
      fail("trainer state: the mask has {} params but model '{}' has {}", s.mask.size(), m_.name, m_.params().size());
    if (!s.importance.empty() && s.importance.size() != units_.size())
      fail("trainer state: importance of {} units but model '{}' has {}", s.importance.size(), m_.name, units_.size());
    step_ = s.step;
    mask_ = s.mask;
    selections_ = s.selections;
    if (!s.optimizer.steps.empty()) {
      opt_->attach(m_.params());
      opt_->load_state(s.optimizer);
    }
    if (control_) {
      control_->restore(s.control);
      m_.graph->set_threads(control_->threads());  // the count the run had moved to
    }
    importance_ = s.importance;
    if (s.rho > 0) rho_ = s.rho;
    train_ms_ = s.train_ms;
    open_ = s.open_selection && !selections_.empty();
    deadline_missed_ = s.deadline_missed;
    progress_ = s.epoch;
    if (!importance_.empty()) update_floor();
    m_.graph->select(mask_);
  }

  // Trains one epoch over `train` (a batch source: start_epoch, batches, load).
  template <class Source>
  EpochRecord train_epoch(Source& train, int epoch) {
    // A run resumed between two steps of this epoch continues at the next one.
    const bool resuming = progress_.epoch == epoch && progress_.batches > 0;
    if (!resuming) progress_ = {.epoch = epoch};
    train.start_epoch(static_cast<std::uint64_t>(epoch), true);
    const std::int64_t batches = train.batches(m_.batch(), true);
    double wait_before = 0;
    if constexpr (requires { train.wait_ms(); }) wait_before = train.wait_ms();
    // As in the reference, the epoch's clock starts before the importance probe
    // and the DP: selecting is part of training time.
    epoch_start_ = clock();
    in_epoch_ = true;
    // The epoch's training steps start with an empty streamed gradient buffer.
    recent_.assign(units_.size(), false);
    if (memory_) {
      if constexpr (requires { train.memory_bytes(); })
        memory_->set_data_bytes(train.memory_bytes() + o_.other_data_bytes);
    }
    if (!resuming && is_elastic(o_.type) && epoch % o_.interval == 0) reselect(train, epoch);
    TrainStep train_step(m_, *opt_);  // params change only through it within the epoch
    double t0 = clock();
    while (progress_.batches < batches) {
      train.load(m_, progress_.batches);
      const float lr = learning_rate();
      const double t1 = clock();
      const auto& loss = train_step.forward(step_);
      const double t2 = clock();
      if (!std::isfinite(loss.loss())) {  // before any update: the weights stay those of the last good step
        in_epoch_ = false;
        throw NonFiniteLoss(fmt::format("the training loss is {} at step {} (epoch {}); training stopped", loss.loss(),
                                        step_ + 1, epoch + 1));
      }
      train_step.backward(mask_, lr, [&](std::span<const int> ks, const auto& update) {
        if (o_.type == TrainType::prunetrain)
          for (int k : ks) add_l1(m_.params()[std::size_t(k)]);
        update();
      });
      const double t3 = clock();
      progress_.train.add(loss.loss(), loss.correct(), loss.count());
      if (on_step) on_step(step_, loss.loss(), loss.correct(), loss.count());
      ++step_;
      ++progress_.batches;
      const double t4 = clock();
      if (control_ && open_) {
        ++selections_.back().steps;
        if (const auto meas =
                control_->observe(selections_.back().unit_mask, t2 - t1, t3 - t2, (t1 - t0) + (t4 - t3))) {
          if (meas->threads != 0) switch_threads(*meas);
          measured(*meas, epoch);
          progress_.measured_ms += meas->measured_ms;
          progress_.full_ms += meas->full_ms;
        }
        if (o_.deadline_s && step_ % 100 == 0) plan_deadline(epoch, "deadline");
      }
      if (after_step) after_step();
      if (stop && stop()) break;
      t0 = (control_ && open_) || after_step ? clock() : t4;
    }
    const double segment = clock() - epoch_start_;
    in_epoch_ = false;
    train_ms_ += segment;
    progress_.train_ms += segment;
    if constexpr (requires { train.wait_ms(); }) progress_.data_wait_ms += train.wait_ms() - wait_before;
    EpochRecord rec;
    rec.epoch = epoch;
    rec.train = progress_.train;
    rec.steps = progress_.batches;
    rec.train_ms = progress_.train_ms;
    rec.data_wait_ms = progress_.data_wait_ms;
    if (progress_.full_ms > 0) rec.measured_share = progress_.measured_ms / progress_.full_ms;
    rec.complete = progress_.batches == batches;
    if (!rec.complete) return rec;  // stopped between steps: state() holds the progress
    progress_ = {};
    // The selection's interval ends with this epoch (or training does): log it.
    if (open_ && ((epoch + 1) % o_.interval == 0 || epoch + 1 == o_.num_epochs)) close_selection();
    if (log)
      log(fmt::format(
          "epoch {}: {} steps in {:.1f} s ({:.0f} img/s), train loss {:.4f}, accuracy {:.2f}%, "
          "waited {:.2f} s for data{}",
          epoch + 1, rec.steps, rec.train_ms / 1000, double(rec.train.count) / (rec.train_ms / 1000), rec.train.loss(),
          100 * rec.train.accuracy(), rec.data_wait_ms / 1000,
          rec.measured_share >= 0 ? fmt::format(", measured share {:.3f} (rho {:.3f})", rec.measured_share, rho_)
                                  : ""));
    return rec;
  }

 private:
  // Masks of the non-elastic types (elastic types start from full training
  // until their first selection, which happens before any step).
  std::vector<bool> static_mask() const {
    const auto& ps = m_.graph->params();
    std::vector<bool> mask(ps.size(), true);
    const auto in_head = [&](const Param& p) {
      for (const auto& h : m_.head_prefixes)
        if (p.name.starts_with(h)) return true;
      return false;
    };
    for (std::size_t k = 0; k < ps.size(); ++k) {
      const Param& p = ps[k];
      if (o_.type == TrainType::traditional_tl_training) mask[k] = in_head(p);
      if (o_.type == TrainType::bn_plus_bias_training)
        mask[k] = in_head(p) || p.role == ParamRole::bias || p.role == ParamRole::norm_scale ||
                  p.role == ParamRole::norm_shift;
    }
    return mask;
  }

  template <class Source>
  void reselect(Source& train, int epoch) {
    const double start = clock();
    train.load(m_, 0);  // the probe batch: the epoch's first
    const ImportanceMetric metric = probe_metric();
    const float lr = learning_rate();
    ProbeScope scope;
    if (memory_) scope = plan_probe(epoch);
    auto importance = evaluator_.evaluate(m_, *opt_, lr, metric, step_, mask_, scope);
    for (std::size_t u = 0; u < importance.size(); ++u)
      if (!std::isfinite(importance[u]))
        throw NonFiniteLoss(
            fmt::format("the importance of '{}' is {} at step {} (epoch {}): the loss on the probe "
                        "batch is not finite; training stopped",
                        units_[u].name, importance[u], step_ + 1, epoch + 1));
    importance_ = scores_in_force(std::move(importance), metric, lr, scope, epoch);
    control_->new_interval();
    update_floor();
    const Profile& p = *profile_;
    // Refused before the first step; later, a machine that has slowed down trains on at the
    // smallest useful rho (rho_in_force).
    if (!o_.deadline_s && o_.rho < floor_rho_ && selections_.empty())
      usage_fail(
          "--rho {} is too small for {} at this batch and input size: the cheapest useful selection "
          "needs rho >= {:.3f} (the forward pass alone is {:.3f} of a full step)",
          o_.rho, m_.name, floor_rho_, p.t_fwd / p.full_step_ms());
    if (o_.deadline_s && step_ == 0) check_deadline_feasible();
    rho_ = rho_in_force(epoch);
    install(epoch, "probe", clock() - start);
  }

  // A probe's scores, or what stands in for them when none is above 0: then no
  // unit's update lowers the loss on the probe batch (with the loss-drop metric,
  // the joint step of every unit overshoots there), the DP would select nothing
  // and the interval would train nothing (the reference's training step fails
  // on an empty list then). The previous probe's scores stay in force; at the
  // first probe the units are scored by gradient magnitude instead. Said in the log.
  std::vector<double> scores_in_force(std::vector<double> scores, ImportanceMetric metric, float lr,
                                      const ProbeScope& scope, int epoch) {
    scores_from_ = "measured";
    if (any_positive(scores)) return scores;
    std::string instead;
    if (any_positive(importance_)) {
      scores = importance_;
      scores_from_ = "previous";
      instead = "the previous probe's scores stay in force";
    } else if (metric != ImportanceMetric::grad_magnitude) {
      scores = evaluator_.evaluate(m_, *opt_, lr, ImportanceMetric::grad_magnitude, step_, mask_, scope);
      scores_from_ = "grad_magnitude";
      instead = any_positive(scores) ? "the units are scored by gradient magnitude instead"
                                     : "nor by gradient magnitude: nothing trains until the next probe";
    } else {
      instead = "nothing trains until the next probe";
    }
    if (log) log(fmt::format("probe at epoch {}: no unit scores above 0 on the probe batch; {}", epoch + 1, instead));
    return scores;
  }

  static bool any_positive(const std::vector<double>& v) {
    return std::any_of(v.begin(), v.end(), [](double x) { return x > 0; });
  }

  // The smallest useful rho under the corrected time model. When no unit scores
  // above 0 no rho buys a unit: then the forward's share, the smallest rho whose
  // budget is not negative (rho stays positive, as checkpoints expect).
  void update_floor() {
    const TimeController& c = *control_;
    floor_rho_ = any_positive(importance_) ? c.smallest_rho(importance_, o_.dp_resolution) : -c.budget(0) / c.full_ms();
  }

  // Solves the DP for rho_ with the interval's importance under the corrected
  // model and installs the selection, closing the one before. `selection_ms`
  // adds the probe's time when a probe preceded it.
  void install(int epoch, const char* reason, double selection_ms = 0) {
    const double start = clock();
    const TimeController& c = *control_;
    const auto t_dw = c.dp_t_dw(), t_dy = c.dp_t_dy();
    MemoryChoice mem;
    const Selection s = memory_ ? select_within_memory(t_dw, t_dy, c.budget(rho_), mem)
                                : dp_.select(t_dw, t_dy, importance_, c.budget(rho_));
    const double dp_ms = clock() - start;
    if (open_) close_selection();
    mask_ = param_mask(units_, s.mask, m_.params().size());
    if (memory_) m_.graph->keep_weight_copies(mem.keep_copies);
    m_.graph->select(mask_);
    for (std::size_t u = 0; u < units_.size(); ++u) recent_[u] = recent_[u] || s.mask[u];
    control_->installed();
    SelectionRecord rec;
    rec.epoch = epoch;
    rec.step = step_;
    rec.reason = reason;
    rec.rho = rho_;
    rec.unit_mask = s.mask;
    rec.importance = s.importance;
    if (std::string_view(reason) == "probe") {
      rec.unit_importance = importance_;
      rec.scores = scores_from_;
    }
    rec.predicted_share = c.step_ms(s.mask) / c.full_ms();
    for (std::size_t u = 0; u < units_.size(); ++u)
      if (s.mask[u]) rec.selected_units.push_back(units_[u].name);
    rec.selection_ms = selection_ms + (clock() - start);
    rec.memory_mib = double(mem.bytes) / kMiB;
    rec.weight_copies = mem.keep_copies;
    rec.solve_mib = double(mem.solve_bytes) / kMiB;
    rec.memory_resolution = mem.resolution;
    selections_.push_back(rec);
    open_ = true;
    if (log) {
      std::string bits;
      for (bool b : s.mask) bits += b ? '1' : '0';
      log(fmt::format(
          "selection at epoch {} ({}): {} of {} units, importance {:.4f}, predicted {:.3f} of a full step "
          "(rho {:.3f}){}, selected in {:.0f} ms (the DP {:.1f} ms), mask {}",
          epoch + 1, reason, rec.selected_units.size(), units_.size(), rec.importance, rec.predicted_share, rho_,
          memory_ ? fmt::format(", memory {:.1f} of {:.1f} MiB{} (solving {:.1f} MiB at memory resolution {})",
                                rec.memory_mib, *o_.memory_budget_mib,
                                mem.keep_copies ? "" : " (frozen weights' copies given up)", rec.solve_mib,
                                rec.memory_resolution)
                  : "",
          rec.selection_ms, dp_ms, bits));
    }
  }

  void close_selection() {
    open_ = false;
    const SelectionRecord& r = selections_.back();
    if (on_selection) on_selection(r);
    if (log && r.measured_share >= 0)
      log(
          fmt::format("selection of epoch {} ({}) ran {} steps: measured share {:.3f}, predicted {:.3f} (full step "
                      "{:.1f} ms)",
                      r.epoch + 1, r.reason, r.steps, r.measured_share, r.predicted_share, r.full_step_ms));
  }

  // A measurement window completed: record it and, if the model was far off, re-solve.
  void measured(const Measurement& meas, int epoch) {
    SelectionRecord& r = selections_.back();
    ++r.windows;
    r.measured_step_ms += (meas.measured_ms - r.measured_step_ms) / double(r.windows);
    r.full_step_ms += (meas.full_ms - r.full_step_ms) / double(r.windows);
    r.measured_share = r.measured_step_ms / r.full_step_ms;
    if (!meas.resolve) return;
    if (log)
      log(
          fmt::format("time model corrected at step {}: the step took {:.1f} ms, {:.1f} predicted ({:+.1f}% of a "
                      "full step); forward x{:.3f}, backward x{:.3f} of the profile",
                      step_, meas.measured_ms, meas.predicted_ms, 100 * meas.error, control_->state().fwd_scale,
                      control_->state().bwd_scale));
    update_floor();
    rho_ = rho_in_force(epoch);
    install(epoch, "correction");
  }

  // The controller moved the kernels to another thread count (time_control.hpp).
  void switch_threads(const Measurement& meas) {
    const int from = m_.graph->context().threads();
    m_.graph->set_threads(meas.threads);
    if (log)
      log(fmt::format(
          "threads {} -> {} at step {}: a full step measured {:.1f} ms on {} thread{} ({:.1f} profiled on {})", from,
          meas.threads, step_, meas.full_ms, from, from == 1 ? "" : "s", profile_->full_step_ms(),
          profile_->key.threads));
  }

  // Deadline mode, every 100 steps: plan rho again and re-solve if it moved.
  void plan_deadline(int epoch, const char* reason) {
    const double rho = rho_in_force(epoch);
    if (std::abs(rho - rho_) < 0.005) return;
    rho_ = rho;
    install(epoch, reason);
  }

  // Training time so far, this epoch's running part included.
  double elapsed_ms() const { return train_ms_ + (clock() - epoch_start_); }

  // The rho the DP solves for: the given one, or with a deadline the one that finishes
  // in time from here (planned_rho); at most 1 and never below the smallest useful rho,
  // which a machine slower than its profile raises mid-run. Says once when the time
  // budget cannot be met; rho returns to the asked one when the machine speeds up.
  double rho_in_force(int epoch) {
    const double rho = o_.deadline_s ? planned_rho(epoch) : o_.rho;
    if (rho >= floor_rho_) return std::min(1.0, rho);
    if (!deadline_missed_ && log)
      log(o_.deadline_s
              ? fmt::format("at the speed measured now the deadline of {:.1f} s cannot be met from step {}: it would "
                            "need rho {:.3f}, below the smallest useful {:.3f}; training on at that rho (said once; "
                            "rho rises again if the machine speeds up)",
                            *o_.deadline_s, step_, rho, floor_rho_)
              : fmt::format("at the speed measured now rho {:.3f} cannot be met from step {}: the cheapest useful "
                            "selection needs {:.3f} of a full step; training on at that rho (said once; rho returns "
                            "to {:.3f} if the machine speeds up)",
                            rho, step_, floor_rho_, rho));
    deadline_missed_ = true;
    return floor_rho_;
  }

  // With a deadline: the rho that finishes within it from here, unclamped.
  double planned_rho(int epoch) const {
    // The plan aims 1% short of the deadline: the last re-plan's 100 steps run
    // at whatever speed the machine has then (measured ends: 0.9995-1.002 of the aim).
    const double remaining = *o_.deadline_s * 1000 * 0.99 - elapsed_ms();
    const std::int64_t steps_left = schedule_.total_steps - static_cast<std::int64_t>(step_);
    // Probes still to come (epochs after this one that re-select), each priced as the last one took.
    const int probes_left = (o_.num_epochs - 1) / o_.interval - epoch / o_.interval;
    const double probe_ms = selections_.empty() ? 0 : selections_.back().selection_ms;
    const TimeController& c = *control_;
    return deadline_rho(remaining, steps_left, probes_left * probe_ms, c.full_ms(), c.state().other_ms);
  }

  // Before the first step: refuses a deadline that the smallest useful rho cannot meet.
  void check_deadline_feasible() const {
    const TimeController& c = *control_;
    const double per_step = floor_rho_ * c.full_ms() + c.state().other_ms;
    const double needed_s = (double(schedule_.total_steps) * per_step + elapsed_ms()) / 1000;
    if (needed_s > *o_.deadline_s)
      usage_fail(
          "--deadline {:.1f} s cannot be met: {} steps at the smallest useful rho {:.3f} take about {:.1f} s "
          "here; the shortest feasible deadline is about {:.1f} s",
          *o_.deadline_s, schedule_.total_steps, floor_rho_, needed_s, needed_s * 1.05);
  }

  // With a memory budget, where the time controller may move the kernels to one thread fewer
  // (TimeControlOptions::adapt_threads): oneDNN's primitive cache keeps the kernels of both
  // thread counts once both have run, so the other count's are made now, before any plan is
  // sized, and their memory (measured) is counted in the base. Returns it (bytes).
  std::int64_t other_thread_kernels() {
    const int threads = m_.graph->context().threads();
    if (!o_.control.correct || !o_.control.adapt_threads || threads < 2) return 0;
    const std::int64_t before = resident_bytes();
    m_.graph->set_threads(threads - 1);
    m_.graph->set_threads(threads);
    return std::max<std::int64_t>(0, resident_bytes() - before);
  }

  // Per unit: whether the optimizer holds its slots (a unit trained before keeps them).
  std::vector<bool> units_with_slots() const {
    std::vector<bool> has(units_.size());
    for (std::size_t u = 0; u < units_.size(); ++u) has[u] = opt_->has_slots(std::size_t(units_[u].params[0]));
    return has;
  }

  // The run's peak under unit mask `train`: its training steps, or the next probe, which runs
  // with the slots this selection leaves (and, with checkpoints, their copy) and can always
  // narrow its scope down to the smallest (smallest_probe).
  MemoryBreakdown peak_memory(const std::vector<bool>& train, const std::vector<bool>& has_slots,
                              bool keep_copies) const {
    MemoryBreakdown steps = memory_->training(train, has_slots, recent_, keep_copies);
    if (o_.writes_checkpoints) steps.checkpoint = steps.optimizer;
    std::vector<bool> after = has_slots;
    for (std::size_t u = 0; u < after.size(); ++u) after[u] = after[u] || train[u];
    const MemoryBreakdown probe = smallest_probe(after);
    return probe.total() > steps.total() ? probe : steps;
  }

  // What the plans may fill: the budget less its margin (bytes).
  double planned_memory() const { return *o_.memory_budget_mib * kMiB * (1 - o_.memory_margin); }

  // The importance metric of the run's training type.
  ImportanceMetric probe_metric() const {
    return o_.type == TrainType::elastic_training                    ? ImportanceMetric::loss_drop
           : o_.type == TrainType::elastic_training_weight_magnitude ? ImportanceMetric::weight_magnitude
                                                                     : ImportanceMetric::grad_magnitude;
  }

  std::filesystem::path spill_dir() const {
    return o_.spill_dir.empty() ? std::filesystem::temp_directory_path() : o_.spill_dir;
  }
  // The probe scoring units f and above.
  ProbeScope probe_scope(std::size_t f, bool spill) const {
    ProbeScope scope{std::vector<bool>(units_.size(), false), spill ? spill_dir() : std::filesystem::path()};
    for (std::size_t u = f; u < units_.size(); ++u) scope.units[u] = true;
    return scope;
  }
  // The smallest probe: the last unit alone, its w0 spilled, no frozen copies kept.
  MemoryBreakdown smallest_probe(const std::vector<bool>& has_slots) const {
    return memory_->probe(has_slots, probe_metric(), probe_scope(units_.size() - 1, true), false);
  }

  // Before a probe under the memory budget: the widest scope that fits (units f and above, f as
  // low as fits; units below score 0 and are never selected: training them could not fit
  // either), w0 kept in memory if that fits too, else spilled to a file; frozen copies below the
  // scope kept if the graph keeps them and they fit. Refuses a budget that the smallest probe,
  // or the smallest selection after it, cannot keep (UsageError naming the smallest feasible
  // budget).
  ProbeScope plan_probe(int epoch) {
    const auto has = units_with_slots();
    const double budget = planned_memory();
    const MemoryBreakdown smallest_p = smallest_probe(has);
    double smallest = std::numeric_limits<double>::infinity();
    std::vector<bool> one(units_.size(), false);
    for (std::size_t u = 0; u < units_.size(); ++u) {
      one[u] = true;
      smallest = std::min(smallest,
                          double(std::min(peak_memory(one, has, true).total(), peak_memory(one, has, false).total())));
      one[u] = false;
    }
    const double needed = std::max(double(smallest_p.total()), smallest);
    if (needed > budget)
      usage_fail(
          "--memory_budget {:.0f} MiB is too small for {} at this batch and input size: the smallest importance "
          "probe needs {:.0f} MiB ({}) and training the smallest unit {:.0f} MiB; with the {:.0f}% margin the "
          "smallest feasible budget is {:.0f} MiB",
          *o_.memory_budget_mib, m_.name, double(smallest_p.total()) / kMiB, smallest_p.describe(), smallest / kMiB,
          100 * o_.memory_margin, std::ceil(needed / (1 - o_.memory_margin) / kMiB));
    const ImportanceMetric metric = probe_metric();
    const bool kept = m_.graph->keeps_weight_copies();
    for (const bool keep : {kept, false}) {
      for (std::size_t f = 0; f < units_.size(); ++f)
        for (const bool spill : {false, true}) {
          ProbeScope scope = probe_scope(f, spill);
          const MemoryBreakdown b = memory_->probe(has, metric, scope, keep);
          if (double(b.total()) > budget) continue;
          m_.graph->keep_weight_copies(keep);
          if ((f > 0 || spill || keep != kept) && log)
            log(fmt::format(
                "importance probe at epoch {} within the memory budget: scores units {} to {} of {}{}{}, "
                "{:.1f} of {:.1f} MiB",
                epoch + 1, f + 1, units_.size(), units_.size(),
                spill ? fmt::format(", the weights it moves spilled to '{}'", scope.spill_dir.string()) : "",
                keep != kept ? ", frozen weights' copies given up" : "", double(b.total()) / kMiB,
                *o_.memory_budget_mib));
          return scope;
        }
      if (!kept) break;
    }
    // The smallest probe fits (checked above): its scope is among those tried.
    fail("internal: no probe scope fits {:.1f} MiB", *o_.memory_budget_mib);
  }

  // What the memory budget decided for a selection.
  struct MemoryChoice {
    bool keep_copies = true;
    std::int64_t bytes = 0;        // its predicted peak (peak_memory)
    std::int64_t solve_bytes = 0;  // the predicted peak while the DP solved (TrainingMemory::solving)
    int resolution = 0;            // the DP's memory resolution
  };

  // The DP under the time budget and the memory budget. The DP works on TrainingMemory's
  // additive model; each candidate is checked against the exact peak, and while it is over,
  // the DP's memory budget drops below the candidate's modelled memory by the excess and it
  // solves again. Solved with frozen weights' copies kept and given up; copies are kept unless
  // giving them up buys importance. The DP runs between steps with the activations given back,
  // its tables in the room the plan in force leaves: at the configured memory resolution, or the
  // finest whose tables fit.
  Selection select_within_memory(std::span<const double> t_dw, std::span<const double> t_dy, double time_budget,
                                 MemoryChoice& choice) {
    const auto has = units_with_slots();
    const double budget = planned_memory();
    m_.graph->release_activations();
    const std::int64_t held =
        memory_->solving(unit_mask_of(units_, mask_), has, recent_, m_.graph->keeps_weight_copies(), 0).total();
    const std::int64_t row = dp_.memory_table_bytes(t_dw, t_dy, time_budget, 0);
    const int resolution = static_cast<int>(
        std::clamp(std::floor((budget - double(held)) / double(row)) - 1, 1.0, double(o_.memory_resolution)));
    choice.resolution = resolution;
    choice.solve_bytes = held + dp_.memory_table_bytes(t_dw, t_dy, time_budget, resolution);
    std::optional<Selection> best;
    for (const bool keep : {true, false}) {
      const auto add = memory_->additive(has, recent_, keep);
      double dp_budget = budget - add.fixed;
      for (int attempt = 0; attempt < 16 && dp_budget >= 0; ++attempt) {
        const Selection s =
            dp_.select(t_dw, t_dy, importance_, time_budget,
                       MemoryModel{add.stretch, add.unit, dp_budget, static_cast<std::int32_t>(resolution)});
        const std::int64_t exact = peak_memory(s.mask, has, keep).total();
        if (double(exact) <= budget) {
          if (!best || s.importance > best->importance) {
            best = s;
            choice.keep_copies = keep;
            choice.bytes = exact;
          }
          break;
        }
        // The next candidate's modelled memory must be below this one's by at least the excess.
        dp_budget = std::min(dp_budget, s.memory) - (double(exact) - budget) - dp_budget / resolution;
      }
    }
    if (best) return *best;
    // Nothing fits (check_memory_feasible refused budgets below the smallest selection, so
    // only slots gathered since can lead here): train nothing until the next probe.
    Selection none;
    none.mask.assign(units_.size(), false);
    choice.keep_copies = true;
    choice.bytes = peak_memory(none.mask, has, true).total();
    return none;
  }

  // prunetrain: d/dw of l1 * sum |w| for kernel weights (rank >= 2).
  void add_l1(Param& p) const {
    if (p.role != ParamRole::weight || p.shape.size() < 2) return;
    host::for_chunks(p.size(), [&](std::int64_t b, std::int64_t c) ELASTIC_INLINE {
      host::array(p.grad + b, c) += o_.l1 * host::array(p.value + b, c).sign();
    });
  }

  Model& m_;
  TrainerOptions o_;
  std::vector<Unit> units_;
  std::optional<Profile> profile_;
  CosineDecay schedule_;
  DPSelector<> dp_;
  ImportanceEvaluator<> evaluator_;
  std::unique_ptr<Optimizer> opt_;
  std::optional<TimeController> control_;  // elastic types
  std::optional<TrainingMemory> memory_;   // with a memory budget
  std::vector<bool> recent_;               // units whose gradients the streamed buffer held this epoch
  std::vector<bool> mask_;
  std::vector<SelectionRecord> selections_;
  std::vector<double> importance_;  // the interval's, from its probe
  std::string scores_from_;         // where they came from (SelectionRecord::scores)
  double rho_ = 0, floor_rho_ = 0;
  double train_ms_ = 0, epoch_start_ = 0;
  bool open_ = false, deadline_missed_ = false;
  bool in_epoch_ = false;   // inside train_epoch (epoch_start_ is this segment's start)
  EpochProgress progress_;  // the epoch in progress
  std::uint64_t step_ = 0;
};

}  // namespace elastic
