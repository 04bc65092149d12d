// Learning-rate schedules. CosineDecay is Keras' CosineDecay, which the
// reference uses for both the learning rate and the weight decay.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>

namespace elastic {

struct CosineDecay {
  float initial_lr = 1e-4f;
  std::int64_t total_steps = 1;
  float alpha = 0;  // floor, as a fraction of initial_lr

  float operator()(std::int64_t step) const {
    const double t =
        double(std::clamp<std::int64_t>(step, 0, total_steps)) / double(std::max<std::int64_t>(total_steps, 1));
    const double cosine = 0.5 * (1 + std::cos(std::numbers::pi * t));
    return static_cast<float>(initial_lr * ((1 - alpha) * cosine + alpha));
  }
};

}  // namespace elastic
