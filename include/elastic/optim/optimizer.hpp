// Optimizers over a ParamStore that update only the selected params (frozen
// ones keep their values and their state untouched), with their whole state
// savable and restorable bit for bit: checkpoints and the importance
// evaluator's probe step both depend on that. A param's slots take memory from
// its first update on, so training a selection costs state for that selection. Semantics follow the reference's
// Keras/TensorFlow-Addons optimizers.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "elastic/core/host_math.hpp"
#include "elastic/graph/param.hpp"
#include "elastic/optim/schedule.hpp"

namespace elastic {

// Everything an optimizer remembers: per-param step counts and named slots
// ("<param>.<slot>"), flat float vectors of the param's size.
struct OptimizerState {
  std::map<std::string, std::int64_t> steps;
  std::map<std::string, std::vector<float>> slots;
  bool operator==(const OptimizerState&) const = default;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual std::string_view name() const = 0;

  // One update of every param k with selected[k], from its gradient, at learning rate lr.
  void step(ParamStore& params, const std::vector<bool>& selected, float lr) {
    attach(params);
    if (selected.size() != params.size())
      fail("{}: selection has {} entries for {} params", name(), selected.size(), params.size());
    for (std::size_t k = 0; k < params.size(); ++k)
      if (selected[k]) update(k, params[k], lr);
  }

  // The same for the params `ks` alone (e.g. one node's, as soon as backward has
  // given them their gradients): each k with selected[k] is updated.
  void step(ParamStore& params, std::span<const int> ks, const std::vector<bool>& selected, float lr) {
    attach(params);
    if (selected.size() != params.size())
      fail("{}: selection has {} entries for {} params", name(), selected.size(), params.size());
    for (int k : ks) {
      if (k < 0 || std::size_t(k) >= params.size()) fail("{}: no param {}", name(), k);
      if (selected[std::size_t(k)]) update(std::size_t(k), params[std::size_t(k)], lr);
    }
  }

  // The weights that step(params, selected, lr) would leave, written into the
  // params, while the optimizer's own state (slots, update counts) stays as it
  // is: each param's slots are copied to scratch (zeros if it has none yet) and
  // updated there. The same arithmetic as step(), so the same weights, bit for
  // bit. The importance probe's trial step: nothing to save and restore.
  void preview(ParamStore& params, const std::vector<bool>& selected, float lr) {
    attach(params);
    if (selected.size() != params.size())
      fail("{}: selection has {} entries for {} params", name(), selected.size(), params.size());
    for (std::size_t k = 0; k < params.size(); ++k)
      if (selected[k]) preview(params, k, params[k].value, lr);
  }

  // The same for param k alone, writing its new weights to `out` (its size;
  // `out` may be the param's own values).
  void preview(ParamStore& params, std::size_t k, float* out, float lr) {
    attach(params);
    if (k >= params.size()) fail("{}: no param {}", name(), k);
    const auto n = static_cast<std::int64_t>(sizes_[k]);
    scratch_.resize(slot_count());
    std::array<float*, 4> s{};
    for (std::size_t i = 0; i < slot_count(); ++i) {
      if (scratch_[i].size() < sizes_[k]) scratch_[i].resize(sizes_[k]);
      s[i] = scratch_[i].data();
      if (slots_[i][k].empty())
        host::for_chunks(n, [&](std::int64_t b, std::int64_t c) ELASTIC_INLINE { host::array(s[i] + b, c).setZero(); });
      else
        host::copy(s[i], slots_[i][k].data(), n);
    }
    if (out != params[k].value) host::copy(out, params[k].value, n);
    apply(out, params[k].grad, std::span<float* const>(s.data(), slot_count()), n, lr, steps_[k] + 1);
  }

  // Gives back the scratch of preview() (as large as the largest param it previewed).
  void release_preview() { std::vector<std::vector<float>>().swap(scratch_); }

  // The update arithmetic alone, on raw buffers of n elements: weights,
  // gradients and one buffer per slot (slot_count() of them), as a param's t-th
  // update (t >= 1). step() runs it on the params; the timing profiler runs it
  // on scratch buffers to price each unit's update with the run's optimizer.
  virtual void apply(float* w, const float* g, std::span<float* const> slots, std::int64_t n, float lr,
                     std::int64_t t) const = 0;
  std::size_t slot_count() const { return slot_names().size(); }

  // Allocates the state for these params (once; later calls check they are the same).
  void attach(const ParamStore& params) {
    if (!steps_.empty()) {
      if (steps_.size() != params.size()) fail("{}: attached to a different set of params", name());
      return;
    }
    steps_.assign(params.size(), 0);
    names_.clear();
    for (const auto& p : params.params()) names_.push_back(p.name);
    sizes_.clear();
    for (const auto& p : params.params()) sizes_.push_back(static_cast<std::size_t>(p.size()));
    slots_.assign(slot_names().size(), std::vector<std::vector<float>>(params.size()));
  }

  // Every param's update count and the slots of the params that have them (a param never
  // updated has none: its slots are zero).
  OptimizerState state() const {
    OptimizerState st;
    for (std::size_t k = 0; k < names_.size(); ++k) {
      st.steps[names_[k]] = steps_[k];
      for (std::size_t s = 0; s < slots_.size(); ++s)
        if (!slots_[s][k].empty()) st.slots[names_[k] + "." + slot_names()[s]] = slots_[s][k];
    }
    return st;
  }

  // Whether param k has slots (it was updated at least once, and its slots are not all zero
  // after a restore).
  bool has_slots(std::size_t k) const { return !slots_.empty() && k < slots_[0].size() && !slots_[0][k].empty(); }

  // Bytes of slot memory in use: only params updated at least once have slots.
  std::size_t slot_bytes() const {
    std::size_t n = 0;
    for (const auto& s : slots_)
      for (const auto& v : s) n += v.size() * sizeof(float);
    return n;
  }

  // Restores a state taken from this optimizer on the same params: every param's update
  // count, and slots where the state has them (zero where it has none). An error names the
  // first param or slot that does not match.
  void load_state(const OptimizerState& st) {
    if (names_.empty()) fail("{}: attach() the params before loading a state", name());
    if (st.steps.size() != names_.size())
      fail("{}: the state holds {} params, the optimizer {}", name(), st.steps.size(), names_.size());
    std::map<std::string, std::pair<std::size_t, std::size_t>, std::less<>> known;  // slot key -> (param, slot)
    for (std::size_t k = 0; k < names_.size(); ++k) {
      if (!st.steps.count(names_[k])) fail("{}: the state has no entry for param '{}'", name(), names_[k]);
      for (std::size_t s = 0; s < slots_.size(); ++s) known[names_[k] + "." + slot_names()[s]] = {k, s};
    }
    for (const auto& [key, values] : st.slots) {
      const auto it = known.find(key);
      if (it == known.end()) fail("{}: the state has slot '{}', which no param of the optimizer has", name(), key);
      if (values.size() != sizes_[it->second.first])
        fail("{}: slot '{}' has {} values, the param {}", name(), key, values.size(), sizes_[it->second.first]);
    }
    for (std::size_t k = 0; k < names_.size(); ++k) steps_[k] = st.steps.at(names_[k]);
    for (const auto& [key, at] : known) {
      auto& slot = slots_[at.second][at.first];
      const auto it = st.slots.find(key);
      // All-zero slots stay unallocated (std::vector{}.swap frees the memory).
      if (it == st.slots.end() || std::all_of(it->second.begin(), it->second.end(), [](float x) { return x == 0.0f; }))
        std::vector<float>().swap(slot);
      else
        slot = it->second;
    }
  }

 protected:
  virtual const std::vector<std::string>& slot_names() const = 0;
  void update(std::size_t k, Param& p, float lr) {
    std::array<float*, 4> s{};
    for (std::size_t i = 0; i < slot_count(); ++i) s[i] = slot(i, k).data();
    apply(p.value, p.grad, std::span<float* const>(s.data(), slot_count()), p.size(), lr, ++steps_[k]);
  }
  // Slot s of param k, allocated (zero-filled) on its first update.
  std::vector<float>& slot(std::size_t s, std::size_t k) {
    auto& v = slots_[s][k];
    if (v.empty()) v.assign(sizes_[k], 0.0f);
    return v;
  }

  std::vector<std::int64_t> steps_;  // updates applied to each param
  std::vector<std::string> names_;

 private:
  std::vector<std::size_t> sizes_;                      // elements of each param
  std::vector<std::vector<std::vector<float>>> slots_;  // [slot][param][element]; empty = all zero
  std::vector<std::vector<float>> scratch_;             // preview(): one param's slots
};

struct SGDWOptions {
  float momentum = 0.9f;
  float weight_decay = 5e-4f;  // per-step decay is weight_decay * lr: it follows the learning-rate schedule
  bool nesterov = false;
};

// SGD with momentum and decoupled weight decay, as the reference builds it:
// tfa.optimizers.SGDW(learning_rate=CosineDecay(lr), weight_decay=CosineDecay(lr * weight_decay),
// momentum=0.9). Both schedules are the same cosine, so at step t with learning
// rate lr_t the decay is wd_t = weight_decay * lr_t, applied to the weights
// before the momentum step:
//   w = w - wd_t * w;  v = momentum * v - lr_t * g;  w = w + v   (nesterov: w + momentum*v - lr_t*g)
class SGDW final : public Optimizer {
 public:
  explicit SGDW(SGDWOptions o = {}) : o_(o) {
    if (!(o.momentum >= 0) || !(o.weight_decay >= 0)) usage_fail("SGDW: momentum and weight decay must be >= 0");
  }
  std::string_view name() const override { return "sgdw"; }

 protected:
  const std::vector<std::string>& slot_names() const override {
    static const std::vector<std::string> names{"momentum"};
    return names;
  }

  void apply(float* __restrict w, const float* __restrict g, std::span<float* const> slots, std::int64_t n, float lr,
             std::int64_t) const override {
    const float m = o_.momentum, wd = o_.weight_decay * lr;
    host::for_chunks(n, [&](std::int64_t b, std::int64_t c) ELASTIC_INLINE {
      auto W = host::array(w + b, c), V = host::array(slots[0] + b, c);
      const auto G = host::array(g + b, c);
      V = m * V - lr * G;
      if (o_.nesterov)
        W = W - wd * W + (m * V - lr * G);
      else
        W = W - wd * W + V;
    });
  }

 private:
  SGDWOptions o_;
};

struct AdamOptions {
  float beta1 = 0.9f, beta2 = 0.999f;
  float eps = 1e-7f;  // Keras' default
  // Decoupled decay (AdamW), per step weight_decay * lr as SGDW's and PyTorch's
  // AdamW. The reference's Adam has none: 0 is Adam.
  float weight_decay = 0;
};

// Adam as Keras implements it: t counts this param's own updates (a param
// frozen for a while resumes its bias correction where it stopped), and
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//   w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps),
// and with weight_decay > 0 (AdamW) w -= weight_decay * lr * w first.
class Adam final : public Optimizer {
 public:
  explicit Adam(AdamOptions o = {}) : o_(o) {
    if (!(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1 && o.eps > 0 && o.weight_decay >= 0))
      usage_fail("Adam: betas must be in [0, 1), eps > 0 and weight decay >= 0");
  }
  std::string_view name() const override { return "adam"; }

 protected:
  const std::vector<std::string>& slot_names() const override {
    static const std::vector<std::string> names{"m", "v"};
    return names;
  }

  void apply(float* __restrict w, const float* __restrict g, std::span<float* const> slots, std::int64_t n, float lr,
             std::int64_t step) const override {
    const auto t = static_cast<double>(step);
    const float lr_t =
        static_cast<float>(lr * std::sqrt(1 - std::pow(double(o_.beta2), t)) / (1 - std::pow(double(o_.beta1), t)));
    const float wd = o_.weight_decay * lr;
    const float b1 = o_.beta1, b2 = o_.beta2, eps = o_.eps;
    host::for_chunks(n, [&](std::int64_t b, std::int64_t c) ELASTIC_INLINE {
      auto W = host::array(w + b, c), M = host::array(slots[0] + b, c), V = host::array(slots[1] + b, c);
      const auto G = host::array(g + b, c);
      M = b1 * M + (1 - b1) * G;
      V = b2 * V + (1 - b2) * G * G;
      W = W - wd * W - lr_t * M / (V.sqrt() + eps);
    });
  }

 private:
  AdamOptions o_;
};

// The reference's optimizer for a model when none is named: Adam for ViT (as
// the reference recommends), SGDW for the CNNs.
inline std::string default_optimizer(std::string_view model) { return model == "vit" ? "adam" : "sgd"; }

// The learning rate of step `step` (0-based) of a run with `opt`: the reference
// decays SGDW's along `schedule` and keeps Adam's at the schedule's initial rate.
inline float learning_rate_at(const Optimizer& opt, const CosineDecay& schedule, std::int64_t step) {
  return opt.name() == "adam" ? schedule.initial_lr : schedule(step);
}

// Refuses an optimizer name that make_optimizer does not know.
inline void check_optimizer_name(std::string_view name) {
  if (!name.empty() && name != "sgd" && name != "adam") usage_fail("--optimizer '{}' is not one of sgd, adam", name);
}
// An optimizer by its command-line name ("sgd" or "adam"; empty: the model's
// default) with the reference's settings: SGDW with momentum 0.9 and decay
// `weight_decay` (5e-4 unset); Adam with none unless given (then AdamW).
inline std::unique_ptr<Optimizer> make_optimizer(std::string name, std::string_view model,
                                                 std::optional<float> weight_decay) {
  check_optimizer_name(name);
  if (name.empty()) name = default_optimizer(model);
  if (name == "sgd")
    return std::make_unique<SGDW>(SGDWOptions{.momentum = 0.9f, .weight_decay = weight_decay.value_or(5e-4f)});
  return std::make_unique<Adam>(AdamOptions{.weight_decay = weight_decay.value_or(0.0f)});
}

}  // namespace elastic
