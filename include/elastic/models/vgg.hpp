// VGG16 as torchvision's `features` (13 3x3 convolutions with bias and ReLU,
// five 2x2 max pools, indices as in torchvision), followed by the fine-tuning
// head: global average pooling, dropout and a linear `head`.
#pragma once

#include <fmt/format.h>

#include "elastic/layers/pool.hpp"
#include "elastic/layers/relayout.hpp"
#include "elastic/models/blocks.hpp"
#include "elastic/models/model.hpp"

namespace elastic {

inline Model vgg16(Context& ctx, const ModelOptions& o) {
  if (o.input_size < 32) fail("vgg16: input_size must be at least 32, got {}", o.input_size);
  auto g = std::make_unique<Graph>(ctx, o.precision);
  const ValueId images = g->input("images", {o.batch, 3, o.input_size, o.input_size});
  constexpr int kPool = 0;
  const int cfg[] = {64, 64, kPool, 128, 128, kPool, 256, 256, 256, kPool, 512, 512, 512, kPool, 512, 512, 512, kPool};
  ValueId x = images;
  std::int64_t in = 3;
  int index = 0;  // torchvision's index into `features`
  for (int c : cfg) {
    if (c == kPool) {
      x = g->add<MaxPool2d>({x}, fmt::format("features.{}", index++), PoolOptions{.kernel_h = 2, .kernel_w = 2});
      continue;
    }
    // Blocked activations after the first layer: VGG's wide 3x3 convolutions run
    // their backward passes 10-15% faster on them (oneDNN has no fast kernel from a
    // 3-channel channels-last image to blocked output, so one relayout follows it).
    const bool first = in == 3;
    x = blocks::conv(*g, x, fmt::format("features.{}", index++),
                     {.in = in, .out = c, .kernel = 3, .bias = true, .blocked = !first});
    const std::string relu = fmt::format("features.{}", index++);
    x = g->add<Eltwise>({x}, relu, Activation::relu);
    if (first) x = g->add<Relayout>({x}, relu + ".to_blocked", true);
    in = c;
  }
  x = g->add<GlobalAvgPool>({x}, "avgpool");
  const ValueId logits = blocks::classifier(*g, x, "dropout", "head", in, o);
  Model m = finish_model("vgg16", std::move(g), images, logits, o.seed);
  m.head_prefixes = {"head."};
  return m;
}

}  // namespace elastic
