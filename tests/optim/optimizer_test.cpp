#include "elastic/optim/optimizer.hpp"

#include <doctest/doctest.h>

#include "elastic/optim/schedule.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace optim_optimizer_test {

using namespace elastic;

namespace {
ParamStore two_params() {
  ParamStore s;
  s.add("a.weight", {3}, ParamRole::weight, Init::zero());
  s.add("a.bias", {2}, ParamRole::bias, Init::zero());
  s.allocate(0);
  const float w0[] = {1.0f, -2.0f, 0.5f}, b0[] = {0.25f, 3.0f};
  std::copy(std::begin(w0), std::end(w0), s[0].value);
  std::copy(std::begin(b0), std::end(b0), s[1].value);
  return s;
}
void set_grads(ParamStore& s, float scale) {
  const float gw[] = {0.1f, -0.3f, 2.0f}, gb[] = {-1.0f, 0.5f};
  for (int i = 0; i < 3; ++i) s[0].grad[i] = gw[i] * scale;
  for (int i = 0; i < 2; ++i) s[1].grad[i] = gb[i] * scale;
}
// One element under Keras' Adam, in double: lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t),
// w -= lr_t * m / (sqrt(v) + eps), t the element's own step count.
struct KerasAdam {
  double w, m = 0, v = 0;
  int t = 0;
  void step(double g, double lr, double b1, double b2, double eps) {
    ++t;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    w -= lr * std::sqrt(1 - std::pow(b2, t)) / (1 - std::pow(b1, t)) * m / (std::sqrt(v) + eps);
  }
};
std::unique_ptr<Optimizer> make(int which) {
  if (which == 0) return std::make_unique<SGDW>(SGDWOptions{});
  return std::make_unique<Adam>();
}
}  // namespace

// The reference: lr_t = CosineDecay(lr, T)(t), wd_t = CosineDecay(lr * weight_decay, T)(t)
// (Keras: initial * 0.5 * (1 + cos(pi * min(t, T) / T))), and TFA's SGDW decays
// first (w -= wd_t * w), then takes Keras' momentum step (v = m v - lr_t g; w += v).
// Written out here in double from those definitions, not from CosineDecay or SGDW.
TEST_CASE("SGDW reproduces tfa.optimizers.SGDW under the reference's two cosine schedules") {
  const double lr0 = 0.1, wd = 0.01, pi = 3.14159265358979323846;
  const std::int64_t T = 4;
  const auto keras_cosine = [&](double initial, std::int64_t t) {
    return initial * 0.5 * (1 + std::cos(pi * double(std::min(t, T)) / double(T)));
  };
  const CosineDecay schedule{float(lr0), T};
  auto s = two_params();
  SGDW opt({.momentum = 0.9f, .weight_decay = float(wd)});
  double w = 1.0, v = 0;  // element 0 of a.weight
  const double grads[] = {0.1, 0.2, -0.1, 0.3, 0.05};
  for (std::int64_t t = 0; t < 5; ++t) {  // the last step is past T: both rates are 0
    set_grads(s, float(grads[t] / 0.1));
    opt.step(s, {true, true}, schedule(t));
    const double lr_t = keras_cosine(lr0, t), wd_t = keras_cosine(lr0 * wd, t);
    w -= wd_t * w;
    v = 0.9 * v - lr_t * grads[t];
    w += v;
    CAPTURE(t);
    CHECK(s[0].value[0] == doctest::Approx(w).epsilon(1e-6));
  }
  // Step 0 by hand for element 2 of a.weight (w 0.5, g 2, lr 0.1, wd_t = 0.1 * 0.01 = 0.001):
  // v = -0.1 * 2 = -0.2; w = 0.5 - 0.001 * 0.5 - 0.2 = 0.2995. The decay is 1e-3 of the weight,
  // not weight_decay (1e-2) itself.
  auto s2 = two_params();
  SGDW opt2({.momentum = 0.9f, .weight_decay = 0.01f});
  set_grads(s2, 1.0f);
  opt2.step(s2, {true, true}, 0.1f);
  CHECK(s2[0].value[2] == doctest::Approx(0.2995).epsilon(1e-7));
  // With no gradient the weight shrinks by exactly lr * weight_decay per step.
  auto s3 = two_params();
  SGDW opt3({.momentum = 0.9f, .weight_decay = 0.01f});
  set_grads(s3, 0.0f);
  opt3.step(s3, {true, true}, 0.01f);
  CHECK(s3[1].value[1] == doctest::Approx(3.0 * (1 - 0.01 * 0.01)).epsilon(1e-7));
}

TEST_CASE("Adam: Keras bias correction, step by step") {
  auto s = two_params();
  Adam opt({.beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-7f});
  KerasAdam ref{.w = -2.0};  // element 1 of a.weight
  const double grads[] = {-0.3, 0.6, 0.15};
  for (int t = 1; t <= 3; ++t) {
    set_grads(s, float(grads[t - 1] / -0.3));
    opt.step(s, {true, false}, 0.01f);
    ref.step(grads[t - 1], 0.01, 0.9, 0.999, 1e-7);
    CHECK(s[0].value[1] == doctest::Approx(ref.w).epsilon(1e-6));
  }
  CHECK(opt.state().steps.at("a.weight") == 3);
  CHECK(opt.state().steps.at("a.bias") == 0);
}

// Keras' Adam (KerasAdam), with t the param's own step count. eps = 1e-3 against sqrt(v) ~ 3e-4 makes eps's place
// count: PyTorch's form (eps added to sqrt(v / (1 - b2^t))) moves b by 0.0091 here instead of 0.0024, and an
// optimizer-wide count (t = 3 for b's first step) by 0.0015.
TEST_CASE("Adam: each param's correction counts its own steps, and eps is added to sqrt(v) as Keras adds it") {
  auto s = two_params();
  const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-3;
  Adam opt({.beta1 = float(b1), .beta2 = float(b2), .eps = float(eps)});
  KerasAdam a{.w = 1.0}, b{.w = 0.25};  // element 0 of a.weight and of a.bias
  for (int t = 0; t < 2; ++t) {         // a alone, twice
    set_grads(s, 1.0f);
    opt.step(s, {true, false}, float(lr));
    a.step(0.1f, lr, b1, b2, eps);
  }
  set_grads(s, 0.01f);  // then both: b's first step, a's third
  opt.step(s, {true, true}, float(lr));
  a.step(double(0.1f * 0.01f), lr, b1, b2, eps);
  b.step(double(-1.0f * 0.01f), lr, b1, b2, eps);
  CHECK(opt.state().steps.at("a.weight") == 3);
  CHECK(opt.state().steps.at("a.bias") == 1);
  CHECK(s[0].value[0] == doctest::Approx(a.w).epsilon(1e-6));
  CHECK(s[1].value[0] == doctest::Approx(b.w).epsilon(1e-6));
  CHECK(b.w == doctest::Approx(0.25 + 0.0024).epsilon(1e-4));  // the figure the comment above gives
}

TEST_CASE("Adam with weight_decay is AdamW: the weights shrink by weight_decay * lr before the Adam step") {
  auto s = two_params();
  Adam opt({.weight_decay = 0.1f});
  set_grads(s, 1.0f);
  opt.step(s, {true, false}, 0.01f);
  // Element 2 of a.weight (w 0.5, g 2): m = 0.2, v = 0.004, lr_t = 0.01 * sqrt(0.001) / 0.1;
  // Adam's move is lr_t * m / (sqrt(v) + eps) = 0.01 * (1 - tiny); the decay 0.1 * 0.01 * 0.5.
  const double lr_t = 0.01 * std::sqrt(0.001) / 0.1;
  const double expected = 0.5 - 0.1 * 0.01 * 0.5 - lr_t * 0.2 / (std::sqrt(0.004) + 1e-7);
  CHECK(s[0].value[2] == doctest::Approx(expected).epsilon(1e-6));
  CHECK(s[0].value[2] == doctest::Approx(0.4895).epsilon(1e-4));
}

TEST_CASE("unselected params keep their values and their optimizer state") {
  for (int which = 0; which < 2; ++which) {
    auto s = two_params();
    auto opt = make(which);
    CAPTURE(opt->name());
    set_grads(s, 1.0f);
    opt->step(s, {true, false}, 0.1f);
    CHECK(s[1].value[0] == 0.25f);
    CHECK(s[1].value[1] == 3.0f);
    CHECK(s[0].value[0] != 1.0f);
    const auto st = opt->state();  // b was never updated: it has no slots, a has all of them
    for (const auto& [key, values] : st.slots) CHECK(key.starts_with("a.weight."));
    CHECK(st.slots.size() == opt->slot_count());
    CHECK(st.steps.at("a.bias") == 0);
  }
}

TEST_CASE("state save and restore gives bit-identical continuation") {
  for (int which = 0; which < 2; ++which) {
    auto s = two_params();
    auto opt = make(which);
    CAPTURE(opt->name());
    set_grads(s, 1.0f);
    opt->step(s, {true, true}, 0.1f);
    const auto saved = opt->state();
    const std::vector<float> w(s[0].values().begin(), s[0].values().end()),
        b(s[1].values().begin(), s[1].values().end());
    set_grads(s, -0.7f);
    opt->step(s, {true, true}, 0.05f);
    const std::vector<float> w_after(s[0].values().begin(), s[0].values().end());
    // Restore values and state, repeat the same step.
    std::copy(w.begin(), w.end(), s[0].value);
    std::copy(b.begin(), b.end(), s[1].value);
    opt->load_state(saved);
    CHECK(opt->state() == saved);
    opt->step(s, {true, true}, 0.05f);
    for (std::size_t i = 0; i < 3; ++i) CHECK(s[0].value[i] == w_after[i]);  // exact equality
  }
}

TEST_CASE("loading a state with wrong names or sizes is an error naming the tensor") {
  auto s = two_params();
  SGDW opt;
  set_grads(s, 1.0f);
  opt.step(s, {true, true}, 0.1f);
  auto st = opt.state();
  auto renamed = st;
  renamed.slots.erase("a.bias.momentum");
  renamed.slots["b.bias.momentum"] = {0, 0};
  CHECK_THROWS_WITH_AS(opt.load_state(renamed), doctest::Contains("'b.bias.momentum'"), Error);
  auto resized = st;
  resized.slots["a.weight.momentum"].push_back(1.0f);
  CHECK_THROWS_WITH_AS(opt.load_state(resized), doctest::Contains("'a.weight.momentum' has 4 values"), Error);
  auto unnamed = st;
  unnamed.steps.erase("a.bias");
  unnamed.steps["c"] = 1;
  CHECK_THROWS_WITH_AS(opt.load_state(unnamed), doctest::Contains("'a.bias'"), Error);
  // A state without a param's slots restores them as zero: the param has none afterwards.
  auto partial = st;
  partial.slots.erase("a.bias.momentum");
  opt.load_state(partial);
  CHECK(opt.has_slots(0));
  CHECK_FALSE(opt.has_slots(1));
  CHECK(opt.state() == partial);
  CHECK_THROWS_AS(opt.step(s, {true}, 0.1f), Error);
}

TEST_CASE("preview writes the weights a step would, bit for bit, and leaves the optimizer's state as it was") {
  for (int which = 0; which < 2; ++which) {
    CAPTURE(which);
    // Param a has been updated twice (slots and a step count of its own), b never.
    ParamStore stepped = two_params(), previewed = two_params();
    auto opt_s = make(which), opt_p = make(which);
    for (int t = 0; t < 2; ++t) {
      set_grads(stepped, 1.0f + float(t));
      set_grads(previewed, 1.0f + float(t));
      opt_s->step(stepped, std::vector<bool>{true, false}, 0.1f);
      opt_p->step(previewed, std::vector<bool>{true, false}, 0.1f);
    }
    const OptimizerState before = opt_p->state();
    set_grads(stepped, -0.7f);
    set_grads(previewed, -0.7f);
    opt_s->step(stepped, std::vector<bool>{true, true}, 0.05f);
    opt_p->preview(previewed, std::vector<bool>{true, true}, 0.05f);
    for (int k = 0; k < 2; ++k) {
      const auto a = stepped[std::size_t(k)].values(), b = previewed[std::size_t(k)].values();
      CHECK(std::equal(a.begin(), a.end(), b.begin()));
    }
    CHECK(opt_p->state() == before);
    CHECK(opt_p->state() != opt_s->state());                                // a real step did change them
    CHECK(opt_p->slot_bytes() == 3 * opt_p->slot_count() * sizeof(float));  // b got no slots
  }
}

// The Trainer's rate and `elastic step --steps`'s both come from learning_rate_at.
TEST_CASE("the learning rate follows the cosine with SGDW and stays constant with Adam") {
  const CosineDecay cosine{0.1f, 10};
  const SGDW sgd;
  const Adam adam;
  CHECK(learning_rate_at(sgd, cosine, 0) == 0.1f);
  CHECK(learning_rate_at(sgd, cosine, 5) == cosine(5));
  CHECK(learning_rate_at(sgd, cosine, 5) < 0.06f);
  CHECK(learning_rate_at(sgd, cosine, 10) == 0.0f);
  for (std::int64_t k : {0, 5, 10, 20}) CHECK(learning_rate_at(adam, cosine, k) == 0.1f);
}

}  // namespace optim_optimizer_test
