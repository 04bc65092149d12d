// The Trainer: the training loop of SPEC section 4 with every training type of
// the reference as a policy that yields a selection of params:
//   full_training, traditional_tl_training (head only), bn_plus_bias_training
//   (norm scales/shifts, biases and head), elastic_training (loss-drop
//   importance + DP selection under the time budget), its weight-magnitude and
//   gradient-magnitude variants, and prunetrain (full training with an L1
//   penalty on kernel weights).
// Elastic types re-select at the start of every `interval`-th epoch on the
// epoch's first batch; the backward budget comes from the measured profile:
//   budget_b = rho * (T_fwd + T_b(all)) - T_fwd.
#pragma once

#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "elastic/core/timer.hpp"
#include "elastic/method/dp_selector.hpp"
#include "elastic/method/importance_evaluator.hpp"
#include "elastic/method/timing_profiler.hpp"
#include "elastic/method/units.hpp"
#include "elastic/optim/schedule.hpp"
#include "elastic/train/loop.hpp"

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
    "full_training",   "traditional_tl_training",           "bn_plus_bias_training",
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
  std::uint64_t seed = 0;
};

// One re-selection, as logged.
struct SelectionRecord {
  int epoch = 0;
  std::vector<bool> unit_mask;
  double importance = 0;        // total importance of the selection
  double predicted_share = 1;   // (T_fwd + T_b(m)) / (T_fwd + T_b(all))
  std::vector<std::string> selected_units;
  double selection_ms = 0;      // the importance probe and the DP (counted in the epoch's training time)
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

struct TrainerState {
  std::uint64_t step = 0;
  std::vector<bool> mask;  // per param
  std::vector<SelectionRecord> selections;
  OptimizerState optimizer;
};

struct EpochRecord {
  int epoch = 0;
  double train_ms = 0;      // training only, no evaluation
  double data_wait_ms = 0;  // part of train_ms spent waiting for the batch source
  Metrics train;
  std::int64_t steps = 0;
};

class Trainer {
 public:
  // `profile` is required by the elastic types (and checked against the model);
  // `steps_per_epoch` sizes the cosine schedule.
  Trainer(Model& m, TrainerOptions o, std::int64_t steps_per_epoch, std::optional<Profile> profile = std::nullopt)
      : m_(m), o_(std::move(o)), units_(selection_units(*m.graph)), profile_(std::move(profile)),
        schedule_{o_.learning_rate, std::max<std::int64_t>(1, steps_per_epoch * o_.num_epochs)},
        dp_(o_.dp_resolution) {
    if (!(o_.rho > 0 && o_.rho <= 1)) usage_fail("--rho must be in (0, 1], got {}", o_.rho);
    if (o_.interval < 1) usage_fail("--interval must be at least 1, got {}", o_.interval);
    if (o_.num_epochs < 1) usage_fail("--num_epochs must be at least 1, got {}", o_.num_epochs);
    if (!(o_.learning_rate > 0)) usage_fail("--learning_rate must be positive, got {}", o_.learning_rate);
    if (o_.optimizer.empty()) o_.optimizer = m.name == "vit" ? "adam" : "sgd";
    if (o_.optimizer == "sgd")
      opt_ = std::make_unique<SGDW>(SGDWOptions{.momentum = 0.9f, .weight_decay = o_.weight_decay.value_or(5e-4f)});
    else if (o_.optimizer == "adam")
      opt_ = std::make_unique<Adam>(AdamOptions{.weight_decay = o_.weight_decay.value_or(0.0f)});
    else
      usage_fail("--optimizer '{}' is not one of sgd, adam", o_.optimizer);
    if (is_elastic(o_.type)) {
      if (!profile_) fail("{} needs a timing profile of this model (elastic profile)", name_of(o_.type));
      profile_->check_matches(profile_key(m_, m_.graph->context().threads()), "given");
      if (profile_->units.size() != units_.size())
        fail("the profile has {} units but model '{}' has {}", profile_->units.size(), m_.name, units_.size());
    }
    mask_ = static_mask();
    m_.graph->select(mask_);
  }

  // Called with every selection; empty by default.
  std::function<void(const SelectionRecord&)> on_selection;
  // Called after every step with its number and its batch's mean loss, correct and counted
  // samples. It may read params but not write them (see Graph::reuse_frozen_weights).
  std::function<void(std::uint64_t step, double loss, std::int64_t correct, std::int64_t count)> on_step;
  // The clock every training time is read from, in ms (tests inject a fake one).
  std::function<double()> clock = monotonic_ms;
  // One human-readable line per selection and per epoch; prints to stdout by default.
  std::function<void(const std::string&)> log = [](const std::string& line) { fmt::print("{}\n", line); };

  const std::vector<bool>& mask() const { return mask_; }
  Optimizer& optimizer() { return *opt_; }
  std::uint64_t step() const { return step_; }
  const std::vector<SelectionRecord>& selections() const { return selections_; }

  // The learning rate of the next step: the reference decays SGDW's along a
  // cosine over the run and keeps Adam's constant.
  float learning_rate() const {
    return opt_->name() == "adam" ? o_.learning_rate : schedule_(static_cast<std::int64_t>(step_));
  }

  TrainerState state() const { return {step_, mask_, selections_, opt_->state()}; }

  // Continues from a saved state (the model's weights restored separately).
  void restore(const TrainerState& s) {
    if (s.mask.size() != m_.params().size())
      fail("trainer state: the mask has {} params but model '{}' has {}", s.mask.size(), m_.name, m_.params().size());
    step_ = s.step;
    mask_ = s.mask;
    selections_ = s.selections;
    if (!s.optimizer.steps.empty()) {
      opt_->attach(m_.params());
      opt_->load_state(s.optimizer);
    }
    m_.graph->select(mask_);
  }

  // Trains one epoch over `train` (a batch source: start_epoch, batches, load).
  template <class Source>
  EpochRecord train_epoch(Source& train, int epoch) {
    train.start_epoch(static_cast<std::uint64_t>(epoch), true);
    EpochRecord rec;
    rec.epoch = epoch;
    const std::int64_t batches = train.batches(m_.batch(), true);
    double wait_before = 0;
    if constexpr (requires { train.wait_ms(); }) wait_before = train.wait_ms();
    // As in the reference, the epoch's clock starts before the importance probe
    // and the DP: selecting is part of training time.
    const double start = clock();
    if (is_elastic(o_.type) && epoch % o_.interval == 0) reselect(train, epoch);
    // Within the epoch params change only through the optimizer, so frozen
    // convolutions keep their re-laid-out weights from step to step; each
    // node's params are updated as soon as backward has their gradients, which
    // are streamed (never all held at once).
    struct StepMode {
      Graph& g;
      explicit StepMode(Graph& graph) : g(graph) {
        g.reuse_frozen_weights(true);
        g.stream_grads(true);
      }
      ~StepMode() {
        g.stream_grads(false);
        g.reuse_frozen_weights(false);
      }
    } mode(*m_.graph);
    const auto& topology = m_.graph->topology();
    for (std::int64_t b = 0; b < batches; ++b) {
      train.load(m_, b);
      const float lr = learning_rate();
      m_.graph->set_step(step_);
      m_.graph->forward(true);
      auto& loss = m_.loss_node();
      if (!std::isfinite(loss.loss()))  // before any update: the weights stay those of the last good step
        throw NonFiniteLoss(fmt::format("the training loss is {} at step {} (epoch {}); training stopped",
                                        loss.loss(), step_ + 1, epoch + 1));
      m_.graph->backward([&](int node) {
        const auto& ks = topology.nodes[std::size_t(node)].params;
        if (o_.type == TrainType::prunetrain)
          for (int k : ks) add_l1(m_.params()[std::size_t(k)]);
        opt_->step(m_.params(), ks, mask_, lr);
      });
      rec.train.add(loss.loss(), loss.correct(), loss.count());
      if (on_step) on_step(step_, loss.loss(), loss.correct(), loss.count());
      ++step_;
      ++rec.steps;
    }
    rec.train_ms = clock() - start;
    if constexpr (requires { train.wait_ms(); }) rec.data_wait_ms = train.wait_ms() - wait_before;
    if (log)
      log(fmt::format("epoch {}: {} steps in {:.1f} s ({:.0f} img/s), train loss {:.4f}, accuracy {:.2f}%, "
                      "waited {:.2f} s for data",
                      epoch + 1, rec.steps, rec.train_ms / 1000, double(rec.train.count) / (rec.train_ms / 1000),
                      rec.train.loss(), 100 * rec.train.accuracy(), rec.data_wait_ms / 1000));
    return rec;
  }

  // The smallest rho whose budget admits any useful selection (one unit with
  // positive importance, its t_dy stretch and its own t_dw).
  double smallest_rho(const std::vector<double>& importance) const {
    const Profile& p = *profile_;
    const double full = p.t_fwd + p.t_bwd_full();
    double best = 1.0, stretch = 0;
    for (std::size_t u = units_.size(); u-- > 0;) {
      stretch += p.t_dy[u];
      if (importance[u] > 0) best = std::min(best, (p.t_fwd + stretch + p.t_dw[u]) / full);
    }
    return best;
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
    const auto metric = o_.type == TrainType::elastic_training ? ImportanceMetric::loss_drop
                        : o_.type == TrainType::elastic_training_weight_magnitude ? ImportanceMetric::weight_magnitude
                                                                                   : ImportanceMetric::grad_magnitude;
    const float lr = learning_rate();
    const auto importance = evaluator_.evaluate(m_, *opt_, lr, metric, step_, mask_);
    for (std::size_t u = 0; u < importance.size(); ++u)
      if (!std::isfinite(importance[u]))
        throw NonFiniteLoss(fmt::format("the importance of '{}' is {} at step {} (epoch {}): the loss on the probe "
                                        "batch is not finite; training stopped",
                                        units_[u].name, importance[u], step_ + 1, epoch + 1));
    const Profile& p = *profile_;
    const double full = p.t_fwd + p.t_bwd_full();
    const double budget = o_.rho * full - p.t_fwd;
    const double floor = smallest_rho(importance);
    if (o_.rho < floor)
      usage_fail("--rho {} is too small for {} at this batch and input size: the cheapest useful selection "
                 "needs rho >= {:.3f} (the forward pass alone is {:.3f} of a full step)",
                 o_.rho, m_.name, floor, p.t_fwd / full);
    const Selection s = dp_.select(p.t_dw, p.t_dy, importance, budget);
    mask_ = param_mask(units_, s.mask, m_.params().size());
    m_.graph->select(mask_);
    SelectionRecord rec;
    rec.epoch = epoch;
    rec.unit_mask = s.mask;
    rec.importance = s.importance;
    rec.predicted_share = (p.t_fwd + s.cost) / full;
    for (std::size_t u = 0; u < units_.size(); ++u)
      if (s.mask[u]) rec.selected_units.push_back(units_[u].name);
    rec.selection_ms = clock() - start;
    selections_.push_back(rec);
    if (on_selection) on_selection(rec);
    if (log) {
      std::string bits;
      for (bool b : s.mask) bits += b ? '1' : '0';
      log(fmt::format("selection at epoch {}: {} of {} units, importance {:.4f}, predicted {:.3f} of a full step "
                      "(rho {}), selected in {:.0f} ms, mask {}",
                      epoch + 1, rec.selected_units.size(), units_.size(), rec.importance, rec.predicted_share, o_.rho,
                      rec.selection_ms, bits));
    }
  }

  // prunetrain: d/dw of l1 * sum |w| for kernel weights (rank >= 2).
  void add_l1(Param& p) const {
    if (p.role != ParamRole::weight || p.shape.size() < 2) return;
    const float l1 = o_.l1;
    float* g = p.grad;
    const float* w = p.value;
    const std::int64_t n = p.size();
#pragma omp parallel for simd schedule(static) if (n > 32768)
    for (std::int64_t i = 0; i < n; ++i) g[i] += l1 * float((w[i] > 0) - (w[i] < 0));
  }

  Model& m_;
  TrainerOptions o_;
  std::vector<Unit> units_;
  std::optional<Profile> profile_;
  CosineDecay schedule_;
  DPSelector<> dp_;
  ImportanceEvaluator<> evaluator_;
  std::unique_ptr<Optimizer> opt_;
  std::vector<bool> mask_;
  std::vector<SelectionRecord> selections_;
  std::uint64_t step_ = 0;
};

}  // namespace elastic
