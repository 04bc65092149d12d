// A small CNN for 28x28 grayscale images (Fashion-MNIST): two stages of two
// conv-bn-relu blocks, each stage ending in 2x2 max pooling, then global average
// pooling, dropout and a linear classifier. Trained from scratch, so batch norm
// runs on batch statistics.
#pragma once

#include <fmt/format.h>

#include "elastic/layers/activation.hpp"
#include "elastic/layers/conv.hpp"
#include "elastic/layers/dropout.hpp"
#include "elastic/layers/linear.hpp"
#include "elastic/layers/pool.hpp"
#include "elastic/models/model.hpp"

namespace elastic {

struct SmallCnnOptions {
  std::int64_t batch = 64;
  std::int64_t channels = 1, height = 28, width = 28;
  std::int64_t num_classes = 10;
  std::int64_t width1 = 32, width2 = 64;  // channels of the two stages
  float dropout = 0.2f;
  std::uint64_t seed = 1;
  Precision precision = Precision::fp32;
};

inline Model small_cnn(Context& ctx, const SmallCnnOptions& o) {
  auto g = std::make_unique<Graph>(ctx, o.precision);
  const ValueId x = g->input("images", {o.batch, o.channels, o.height, o.width});
  ValueId h = x;
  std::int64_t in = o.channels;
  int block = 0;
  const auto conv_bn_relu = [&](std::int64_t out) {
    const auto name = fmt::format("features.{}", block++);
    h = g->add<Conv2d>(
        {h}, name + ".conv",
        Conv2dOptions{
            .in_channels = in, .out_channels = out, .kernel_h = 3, .kernel_w = 3, .padding = 1, .bias = false});
    h = g->add<BatchNorm2d>({h}, name + ".bn", BatchNorm2dOptions{.num_features = out});
    h = g->add<Eltwise>({h}, name + ".relu", Activation::relu);
    in = out;
  };
  for (std::int64_t width : {o.width1, o.width2}) {
    conv_bn_relu(width);
    conv_bn_relu(width);
    h = g->add<MaxPool2d>({h}, fmt::format("pool{}", block / 2), PoolOptions{.kernel_h = 2, .kernel_w = 2});
  }
  h = g->add<GlobalAvgPool>({h}, "avgpool");
  h = g->add<Dropout>({h}, "dropout", o.dropout, o.seed);
  const ValueId logits = g->add<Linear>({h}, "fc", LinearOptions{.in_features = in, .out_features = o.num_classes});
  Model m = finish_model("small_cnn", std::move(g), x, logits, o.seed);
  m.head_prefixes = {"fc."};
  m.set_batch_stats(true);
  return m;
}

}  // namespace elastic
