// ResNet50 as torchvision builds it (Bottleneck blocks [3, 4, 6, 3], stride on
// the 3x3 convolution, projection shortcuts named downsample.0/.1), with the
// fine-tuning head: global average pooling, dropout, `fc`.
#pragma once

#include <fmt/format.h>

#include "elastic/layers/add.hpp"
#include "elastic/layers/pool.hpp"
#include "elastic/models/blocks.hpp"
#include "elastic/models/model.hpp"

namespace elastic {

inline Model resnet50(Context& ctx, const ModelOptions& o) {
  using blocks::conv_bn;
  if (o.input_size < 32) fail("resnet50: input_size must be at least 32, got {}", o.input_size);
  auto g = std::make_unique<Graph>(ctx, o.precision);
  const ValueId images = g->input("images", {o.batch, 3, o.input_size, o.input_size});
  ValueId x = conv_bn(*g, images, "conv1", "bn1", {.in = 3, .out = 64, .kernel = 7, .stride = 2}, Activation::relu);
  x = g->add<MaxPool2d>(
      {x}, "maxpool",
      PoolOptions{.kernel_h = 3, .kernel_w = 3, .stride_h = 2, .stride_w = 2, .padding_h = 1, .padding_w = 1});
  std::int64_t in = 64;
  const int depth[4] = {3, 4, 6, 3};
  for (int stage = 0; stage < 4; ++stage) {
    const std::int64_t width = 64 << stage, out = width * 4;
    for (int b = 0; b < depth[stage]; ++b) {
      const auto p = fmt::format("layer{}.{}.", stage + 1, b);
      const std::int64_t stride = (b == 0 && stage > 0) ? 2 : 1;
      ValueId h = conv_bn(*g, x, p + "conv1", p + "bn1", {.in = in, .out = width}, Activation::relu);
      h = conv_bn(*g, h, p + "conv2", p + "bn2", {.in = width, .out = width, .kernel = 3, .stride = stride},
                  Activation::relu);
      h = conv_bn(*g, h, p + "conv3", p + "bn3", {.in = width, .out = out}, std::nullopt);
      ValueId shortcut = x;
      if (b == 0)
        shortcut = conv_bn(*g, x, p + "downsample.0", p + "downsample.1", {.in = in, .out = out, .stride = stride},
                           std::nullopt);
      x = g->add<Add>({h, shortcut}, p + "add", Activation::relu);  // the block's ReLU inside the add
      in = out;
    }
  }
  x = g->add<GlobalAvgPool>({x}, "avgpool");
  const ValueId logits = blocks::classifier(*g, x, "dropout", "fc", in, o);
  Model m = finish_model("resnet50", std::move(g), images, logits, o.seed);
  m.head_prefixes = {"fc."};
  return m;
}

}  // namespace elastic
