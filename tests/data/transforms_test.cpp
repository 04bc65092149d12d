// Resize, augmentation and normalization against values worked out by hand.
#include "elastic/data/transforms.hpp"

#include <cmath>
#include <numbers>

#include <doctest/doctest.h>

// One namespace per test file: the tests of a directory build as one translation unit.
namespace data_transforms_test {

using namespace elastic;
using namespace elastic::data;

namespace {

Image make(std::int64_t h, std::int64_t w, auto&& f) {
  Image img;
  img.height = h;
  img.width = w;
  img.rgb.resize(std::size_t(h * w * 3));
  for (std::int64_t y = 0; y < h; ++y)
    for (std::int64_t x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) img.rgb[std::size_t((y * w + x) * 3 + c)] = std::uint8_t(f(y, x, c));
  return img;
}

std::vector<float> to_float(const Image& img) { return {img.rgb.begin(), img.rgb.end()}; }

float at(const std::vector<float>& v, std::int64_t w, std::int64_t y, std::int64_t x, int c) {
  return v[std::size_t((y * w + x) * 3 + c)];
}

}  // namespace

TEST_CASE("resize to the same size is the identity; a constant image stays constant") {
  const Image img = make(5, 7, [](auto y, auto x, int c) { return (y * 31 + x * 7 + c * 50) % 256; });
  std::vector<float> out(5 * 7 * 3);
  resize_bilinear(img, 5, 7, out.data());
  CHECK(out == to_float(img));
  const Image flat = make(9, 4, [](auto, auto, int c) { return 10 + c; });
  std::vector<float> big(23 * 17 * 3);
  resize_bilinear(flat, 23, 17, big.data());
  for (std::size_t i = 0; i < big.size(); ++i) REQUIRE(big[i] == float(10 + i % 3));
}

TEST_CASE("resize samples at pixel centers: upsampling a ramp by 2 is linear inside, clamped at the edges") {
  // Columns 0, 10, 20, 30; output x samples the input at x / 2 - 0.25.
  const Image ramp = make(1 + 1, 4, [](auto, auto x, int) { return 10 * x; });
  std::vector<float> out(2 * 8 * 3);
  resize_bilinear(ramp, 2, 8, out.data());
  const float expect[8] = {0, 2.5, 7.5, 12.5, 17.5, 22.5, 27.5, 30};
  for (int x = 0; x < 8; ++x) CHECK(at(out, 8, 0, x, 1) == doctest::Approx(expect[x]));
  // Downsampling 4 -> 2 samples at 0.5 and 2.5 (averages of neighbours).
  std::vector<float> half(1 * 2 * 3);
  resize_bilinear(ramp, 1, 2, half.data());
  CHECK(at(half, 2, 0, 0, 0) == doctest::Approx(5));
  CHECK(at(half, 2, 0, 1, 0) == doctest::Approx(25));
}

TEST_CASE("no flip and no rotation is the identity; normalization uses mean and stddev per channel") {
  const Image img = make(6, 6, [](auto y, auto x, int c) { return y * 40 + x + c; });
  const auto in = to_float(img);
  std::vector<float> out(in.size());
  Normalize n{.mean = {0.5f, 0.25f, 0.0f}, .stddev = {0.5f, 0.25f, 2.0f}};
  augment_normalize(in.data(), 6, 6, Augmentation{}, n, out.data());
  for (std::size_t i = 0; i < in.size(); ++i) {
    const int c = int(i % 3);
    REQUIRE(out[i] == doctest::Approx((in[i] / 255.0f - n.mean[c]) / n.stddev[c]).epsilon(1e-5));
  }
}

TEST_CASE("a flip mirrors columns; a quarter turn counter-clockwise maps out(y, x) = in(x, W-1-y)") {
  const Image img = make(5, 5, [](auto y, auto x, int c) { return y * 50 + x * 3 + c; });
  const auto in = to_float(img);
  std::vector<float> out(in.size());
  augment_normalize(in.data(), 5, 5, Augmentation{.flip = true}, Normalize{}, out.data());
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 5; ++x) REQUIRE(at(out, 5, y, x, 0) * 255 == doctest::Approx(at(in, 5, y, 4 - x, 0)));
  augment_normalize(in.data(), 5, 5, Augmentation{.angle = std::numbers::pi_v<float> / 2}, Normalize{}, out.data());
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 5; ++x)
      REQUIRE(at(out, 5, y, x, 2) * 255 == doctest::Approx(at(in, 5, x, 4 - y, 2)).epsilon(1e-4));
  // The top-right corner moves to the top-left.
  CHECK(at(out, 5, 0, 0, 0) * 255 == doctest::Approx(at(in, 5, 0, 4, 0)).epsilon(1e-4));
}

TEST_CASE("rotation fills the corners by reflecting across the edge, the edge pixel included") {
  // reflect() on its own: n = 4 pixels span [-0.5, 3.5].
  CHECK(data::detail::reflect(1.25f, 4) == doctest::Approx(1.25f));
  CHECK(data::detail::reflect(-1.0f, 4) == doctest::Approx(0.0f));  // -1 -> 0: (a | a b ...)
  CHECK(data::detail::reflect(-2.0f, 4) == doctest::Approx(1.0f));
  CHECK(data::detail::reflect(4.0f, 4) == doctest::Approx(3.0f));  // 4 -> 3: (... c d | d)
  CHECK(data::detail::reflect(5.0f, 4) == doctest::Approx(2.0f));
  CHECK(data::detail::reflect(-9.0f, 4) == doctest::Approx(0.0f));  // period 8: -9 -> -1 -> 0
  // An eighth of a turn on a square with a bright top row: corners come from
  // inside the image (never zeros), and every output value lies in the input's range.
  const Image img = make(9, 9, [](auto y, auto, int) { return y == 0 ? 250 : 20; });
  const auto in = to_float(img);
  std::vector<float> out(in.size());
  augment_normalize(in.data(), 9, 9, Augmentation{.angle = std::numbers::pi_v<float> / 4}, Normalize{}, out.data());
  for (float v : out) {
    REQUIRE(v * 255 >= 20 - 1e-3);
    REQUIRE(v * 255 <= 250 + 1e-3);
  }
  // Output (0, 0) at 45 degrees samples input (x, y) = (4 - 0, 4 - 5.657) = (4, -1.657),
  // reflected to row 0.657: between rows 0 (250) and 1 (20).
  const float want = 250 + (20 - 250) * (std::sqrt(32.0f) - 4 - 1 + 0.0f);
  CHECK(at(out, 9, 0, 0, 0) * 255 == doctest::Approx(want).epsilon(1e-3));
}

TEST_CASE("augmentations are drawn uniformly within +-0.2 of a turn and flip about half the time") {
  Rng rng(42);
  int flips = 0;
  float lo = 10, hi = -10;
  for (int i = 0; i < 4000; ++i) {
    const auto a = draw_augmentation(rng);
    flips += a.flip;
    lo = std::min(lo, a.angle);
    hi = std::max(hi, a.angle);
  }
  const float max = 0.2f * 2 * std::numbers::pi_v<float>;
  CHECK(flips > 1800);
  CHECK(flips < 2200);
  CHECK(lo >= -max);
  CHECK(hi <= max);
  CHECK(lo < -0.95f * max);
  CHECK(hi > 0.95f * max);
}

TEST_CASE("transform_image without augmentation equals resize then normalize; with it, the pieces in order") {
  const Image img = make(13, 11, [](auto y, auto x, int c) { return (y * 17 + x * 5 + c * 60) % 256; });
  const Normalize n{.mean = {0.485f, 0.456f, 0.406f}, .stddev = {0.229f, 0.224f, 0.225f}};
  std::vector<float> a(8 * 6 * 3), b(8 * 6 * 3), scratch;
  transform_image(img, 8, 6, nullptr, n, a.data(), scratch);
  resize_bilinear(img, 8, 6, b.data());
  normalize(b.data(), 8 * 6, n);
  CHECK(a == b);
  const Augmentation aug{.flip = true, .angle = 0.3f};
  transform_image(img, 8, 6, &aug, n, a.data(), scratch);
  std::vector<float> resized(8 * 6 * 3);
  resize_bilinear(img, 8, 6, resized.data());
  augment_normalize(resized.data(), 8, 6, aug, n, b.data());
  CHECK(a == b);
}

}  // namespace data_transforms_test
