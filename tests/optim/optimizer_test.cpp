#include <doctest/doctest.h>

#include "elastic/optim/optimizer.hpp"

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
std::unique_ptr<Optimizer> make(int which) {
  if (which == 0) return std::make_unique<SGDW>(SGDWOptions{.initial_lr = 0.1f});
  return std::make_unique<Adam>();
}
}  // namespace

TEST_CASE("SGDW: momentum velocity and decoupled weight decay scaled by lr / initial_lr") {
  auto s = two_params();
  SGDW opt({.momentum = 0.9f, .weight_decay = 0.01f, .initial_lr = 0.1f});
  double w = 1.0, v = 0;  // element 0 of a.weight, by hand
  const double lrs[] = {0.1, 0.05, 0.02};
  const double grads[] = {0.1, 0.2, -0.1};
  for (int t = 0; t < 3; ++t) {
    set_grads(s, float(grads[t] / 0.1));
    opt.step(s, {true, true}, float(lrs[t]));
    v = 0.9 * v - lrs[t] * grads[t];
    w = w - 0.01 * lrs[t] / 0.1 * w + v;
    CHECK(s[0].value[0] == doctest::Approx(w).epsilon(1e-6));
  }
  // Step 1 by hand for element 2 of a.weight: v = -0.1*2 = -0.2; w = 0.5 - 0.01*0.5 - 0.2 = 0.295.
  auto s2 = two_params();
  SGDW opt2({.momentum = 0.9f, .weight_decay = 0.01f, .initial_lr = 0.1f});
  set_grads(s2, 1.0f);
  opt2.step(s2, {true, true}, 0.1f);
  CHECK(s2[0].value[2] == doctest::Approx(0.295).epsilon(1e-6));
}

TEST_CASE("Adam: Keras bias correction with a per-param step count") {
  auto s = two_params();
  Adam opt({.beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-7f});
  double w = -2.0, m = 0, v = 0;  // element 1 of a.weight
  const double grads[] = {-0.3, 0.6, 0.15};
  for (int t = 1; t <= 3; ++t) {
    set_grads(s, float(grads[t - 1] / -0.3));
    opt.step(s, {true, false}, 0.01f);
    const double g = grads[t - 1];
    m = 0.9 * m + 0.1 * g;
    v = 0.999 * v + 0.001 * g * g;
    const double lr_t = 0.01 * std::sqrt(1 - std::pow(0.999, t)) / (1 - std::pow(0.9, t));
    w -= lr_t * m / (std::sqrt(v) + 1e-7);
    CHECK(s[0].value[1] == doctest::Approx(w).epsilon(1e-6));
  }
  // First Adam step moves each element by about lr against its gradient's sign.
  CHECK(opt.state().steps.at("a.weight") == 3);
  CHECK(opt.state().steps.at("a.bias") == 0);
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
    const auto st = opt->state();
    for (const auto& [key, values] : st.slots)
      if (key.starts_with("a.bias"))
        for (float x : values) CHECK(x == 0.0f);
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
    const std::vector<float> w(s[0].values().begin(), s[0].values().end()), b(s[1].values().begin(), s[1].values().end());
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
  SGDW opt({.initial_lr = 0.1f});
  opt.attach(s);
  auto st = opt.state();
  auto renamed = st;
  renamed.slots.erase("a.bias.momentum");
  renamed.slots["b.bias.momentum"] = {0, 0};
  CHECK_THROWS_WITH_AS(opt.load_state(renamed), doctest::Contains("a.bias.momentum"), Error);
  auto resized = st;
  resized.slots["a.weight.momentum"].push_back(1.0f);
  CHECK_THROWS_WITH_AS(opt.load_state(resized), doctest::Contains("'a.weight.momentum' has 4 values"), Error);
  CHECK_THROWS_AS(opt.step(s, {true}, 0.1f), Error);
}
