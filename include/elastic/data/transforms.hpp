// Image transforms of the input pipeline: bilinear resize to the model's
// input size, the training augmentation (random horizontal flip and random
// rotation of up to 0.2 of a turn either way, reflect fill) and per-channel
// normalization, written straight into an NHWC float batch slot.
//
// Coordinates use pixel centers: output pixel x samples the source at
// (x + 0.5) * in / out - 0.5 (half-pixel centers, no antialiasing), clamped to
// the edge pixels. Rotation turns the image about its center; a sample that
// falls outside is reflected back across the edge, the edge pixel included
// (d c b a | a b c d | d c b a).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

#include "elastic/core/random.hpp"
#include "elastic/data/image.hpp"

namespace elastic::data {

// Per-channel normalization applied to RGB scaled to [0, 1].
struct Normalize {
  float mean[3] = {0.0f, 0.0f, 0.0f};
  float stddev[3] = {1.0f, 1.0f, 1.0f};
};

// One sample's augmentation: drawn from a generator seeded per sample, so it
// depends on (seed, epoch, position) and not on which thread decodes it.
struct Augmentation {
  bool flip = false;
  float angle = 0.0f;  // radians, counter-clockwise
};

// Fraction of a full turn the random rotation spans either way.
inline constexpr float kMaxRotationTurns = 0.2f;

inline Augmentation draw_augmentation(Rng& rng) {
  Augmentation a;
  a.flip = rng.next() >> 63;
  const float max_angle = kMaxRotationTurns * 2.0f * std::numbers::pi_v<float>;
  a.angle = rng.uniform(-max_angle, max_angle);
  return a;
}

// Bilinear resize of an RGB image to (height, width, 3) floats in [0, 255].
inline void resize_bilinear(const Image& src, std::int64_t height, std::int64_t width, float* out) {
  const double sy = double(src.height) / double(height), sx = double(src.width) / double(width);
  // Horizontal taps are the same for every row: compute them once.
  std::vector<std::int64_t> x0(static_cast<std::size_t>(width)), x1(static_cast<std::size_t>(width));
  std::vector<float> fx(static_cast<std::size_t>(width));
  for (std::int64_t x = 0; x < width; ++x) {
    const double s = std::clamp((double(x) + 0.5) * sx - 0.5, 0.0, double(src.width - 1));
    const auto i = static_cast<std::int64_t>(s);
    x0[x] = i;
    x1[x] = std::min(i + 1, src.width - 1);
    fx[x] = static_cast<float>(s - double(i));
  }
  for (std::int64_t y = 0; y < height; ++y) {
    const double s = std::clamp((double(y) + 0.5) * sy - 0.5, 0.0, double(src.height - 1));
    const auto y0 = static_cast<std::int64_t>(s);
    const std::int64_t y1 = std::min(y0 + 1, src.height - 1);
    const float fy = static_cast<float>(s - double(y0));
    const std::uint8_t* r0 = src.rgb.data() + y0 * src.width * 3;
    const std::uint8_t* r1 = src.rgb.data() + y1 * src.width * 3;
    float* o = out + y * width * 3;
    for (std::int64_t x = 0; x < width; ++x) {
      const std::int64_t a = x0[x] * 3, b = x1[x] * 3;
      const float f = fx[x];
      for (int c = 0; c < 3; ++c) {
        const float top = float(r0[a + c]) + f * (float(r0[b + c]) - float(r0[a + c]));
        const float bottom = float(r1[a + c]) + f * (float(r1[b + c]) - float(r1[a + c]));
        o[3 * x + c] = top + fy * (bottom - top);
      }
    }
  }
}

namespace detail {

// Reflects a continuous pixel coordinate into [-0.5, n - 0.5] across the
// edges, the edge pixel included.
inline float reflect(float v, std::int64_t n) {
  const float period = 2.0f * float(n);
  float m = std::fmod(v + 0.5f, period);
  if (m < 0) m += period;
  if (m >= float(n)) m = period - m;
  return m - 0.5f;
}

}  // namespace detail

// Writes `in` (height, width, 3 floats in [0, 255]) flipped and rotated by `a`
// and normalized into `out` (same shape). Output pixel p takes the input at
// R(-angle) (p - center) + center, mirrored horizontally when flipped.
inline void augment_normalize(const float* in, std::int64_t height, std::int64_t width, const Augmentation& a,
                              const Normalize& norm, float* out) {
  float scale[3], shift[3];
  for (int c = 0; c < 3; ++c) {
    scale[c] = 1.0f / (255.0f * norm.stddev[c]);
    shift[c] = -norm.mean[c] / norm.stddev[c];
  }
  const float cy = 0.5f * float(height - 1), cx = 0.5f * float(width - 1);
  const float cs = std::cos(a.angle), sn = std::sin(a.angle);
  for (std::int64_t y = 0; y < height; ++y) {
    for (std::int64_t x = 0; x < width; ++x) {
      // Image rows grow downwards, so a counter-clockwise turn on screen maps
      // output (dx, dy) back to input (cos dx - sin dy, sin dx + cos dy).
      const float dx = float(x) - cx, dy = float(y) - cy;
      float sx = cs * dx - sn * dy + cx;
      const float sy = sn * dx + cs * dy + cy;
      if (a.flip) sx = float(width - 1) - sx;
      const float rx = std::clamp(detail::reflect(sx, width), 0.0f, float(width - 1));
      const float ry = std::clamp(detail::reflect(sy, height), 0.0f, float(height - 1));
      const auto x0 = static_cast<std::int64_t>(rx), y0 = static_cast<std::int64_t>(ry);
      const std::int64_t x1 = std::min(x0 + 1, width - 1), y1 = std::min(y0 + 1, height - 1);
      const float fx = rx - float(x0), fy = ry - float(y0);
      const float* p00 = in + (y0 * width + x0) * 3;
      const float* p01 = in + (y0 * width + x1) * 3;
      const float* p10 = in + (y1 * width + x0) * 3;
      const float* p11 = in + (y1 * width + x1) * 3;
      float* o = out + (y * width + x) * 3;
      for (int c = 0; c < 3; ++c) {
        const float top = p00[c] + fx * (p01[c] - p00[c]);
        const float bottom = p10[c] + fx * (p11[c] - p10[c]);
        o[c] = (top + fy * (bottom - top)) * scale[c] + shift[c];
      }
    }
  }
}

// Normalizes `n` RGB floats in [0, 255] in place.
inline void normalize(float* data, std::int64_t pixels, const Normalize& norm) {
  for (int c = 0; c < 3; ++c) {
    const float scale = 1.0f / (255.0f * norm.stddev[c]), shift = -norm.mean[c] / norm.stddev[c];
    for (std::int64_t p = 0; p < pixels; ++p) data[p * 3 + c] = data[p * 3 + c] * scale + shift;
  }
}

// The whole per-sample transform: resize into `out` (height, width, 3), then,
// when `augment` holds an augmentation, flip/rotate through `scratch` (same
// size); finally normalize.
inline void transform_image(const Image& img, std::int64_t height, std::int64_t width, const Augmentation* augment,
                            const Normalize& norm, float* out, std::vector<float>& scratch) {
  if (!augment) {
    resize_bilinear(img, height, width, out);
    normalize(out, height * width, norm);
    return;
  }
  scratch.resize(static_cast<std::size_t>(height * width * 3));
  resize_bilinear(img, height, width, scratch.data());
  augment_normalize(scratch.data(), height, width, *augment, norm, out);
}

}  // namespace elastic::data
