// Small deterministic random number generation: a sequential generator for
// initialization and shuffling, and a counter-based hash for dropout masks so
// that a mask depends only on (seed, step, element) and never on threading.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

namespace elastic {

// SplitMix64 finalizer: a bijective 64-bit mix with good avalanche.
constexpr std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform float in [0, 1) from the top 24 bits of a 64-bit value.
constexpr float to_unit_float(std::uint64_t bits) { return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f); }

// xoshiro256** seeded through SplitMix64. State is four words, so it can be
// saved and restored exactly (checkpoints).
class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0) { reseed(seed); }

  void reseed(std::uint64_t seed) {
    for (auto& word : s_) {
      seed = mix64(seed);
      word = seed;
    }
  }

  std::uint64_t next() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  float uniform() { return to_unit_float(next()); }
  float uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }

  // Standard normal by Box-Muller (one value per call; simplicity over speed).
  float normal() {
    const double u1 = (static_cast<double>(next() >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = static_cast<double>(next() >> 11) * 0x1.0p-53;
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2));
  }

  // Uniform integer in [0, n), n > 0 (Lemire's multiply-shift, tiny bias is irrelevant here).
  std::uint64_t below(std::uint64_t n) {
    return static_cast<std::uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
  }

  const std::uint64_t* state() const { return s_; }
  void set_state(const std::uint64_t state[4]) {
    for (int i = 0; i < 4; ++i) s_[i] = state[i];
  }

 private:
  static constexpr std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4];
};

}  // namespace elastic
