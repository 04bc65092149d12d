// MobileNetV2 as torchvision builds it (inverted residual blocks, ReLU6, names
// features.N.conv.M...), with torchvision's own classifier: dropout and a
// linear layer named classifier.1.
#pragma once

#include <cmath>

#include <fmt/format.h>

#include "elastic/layers/add.hpp"
#include "elastic/layers/pool.hpp"
#include "elastic/models/blocks.hpp"
#include "elastic/models/model.hpp"

namespace elastic {

inline Model mobilenetv2(Context& ctx, const ModelOptions& o) {
  using blocks::conv_bn;
  if (o.input_size < 32) fail("mobilenetv2: input_size must be at least 32, got {}", o.input_size);
  auto g = std::make_unique<Graph>(ctx, o.precision);
  const ValueId images = g->input("images", {o.batch, 3, o.input_size, o.input_size});
  ValueId x = conv_bn(*g, images, "features.0.0", "features.0.1", {.in = 3, .out = 32, .kernel = 3, .stride = 2},
                      Activation::relu6);
  struct Stage {
    int expand, channels, repeats, stride;
  };
  const Stage stages[] = {{1, 16, 1, 1}, {6, 24, 2, 2},  {6, 32, 3, 2}, {6, 64, 4, 2},
                          {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
  std::int64_t in = 32;
  int index = 1;
  for (const auto& s : stages) {
    for (int r = 0; r < s.repeats; ++r, ++index) {
      const std::int64_t stride = r == 0 ? s.stride : 1, out = s.channels;
      const std::int64_t hidden = static_cast<std::int64_t>(std::lround(double(in) * s.expand));
      const auto p = fmt::format("features.{}.conv.", index);
      ValueId h = x;
      int m = 0;
      if (s.expand != 1) {
        h = conv_bn(*g, h, fmt::format("{}{}.0", p, m), fmt::format("{}{}.1", p, m), {.in = in, .out = hidden},
                    Activation::relu6);
        ++m;
      }
      h = conv_bn(*g, h, fmt::format("{}{}.0", p, m), fmt::format("{}{}.1", p, m),
                  {.in = hidden, .out = hidden, .kernel = 3, .stride = stride, .groups = hidden}, Activation::relu6);
      ++m;
      h = conv_bn(*g, h, fmt::format("{}{}", p, m), fmt::format("{}{}", p, m + 1), {.in = hidden, .out = out},
                  std::nullopt);
      if (stride == 1 && in == out) h = g->add<Add>({x, h}, fmt::format("features.{}.add", index));
      x = h;
      in = out;
    }
  }
  x = conv_bn(*g, x, fmt::format("features.{}.0", index), fmt::format("features.{}.1", index), {.in = in, .out = 1280},
              Activation::relu6);
  x = g->add<GlobalAvgPool>({x}, "avgpool");
  const ValueId logits = blocks::classifier(*g, x, "classifier.0", "classifier.1", 1280, o);
  Model m = finish_model("mobilenetv2", std::move(g), images, logits, o.seed);
  m.head_prefixes = {"classifier."};
  return m;
}

}  // namespace elastic
