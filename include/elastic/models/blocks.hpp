// Building blocks shared by the model builders: convolution + batch norm (+
// activation) under torchvision's names.
#pragma once

#include <optional>
#include <string>

#include "elastic/graph/graph.hpp"
#include "elastic/layers/activation.hpp"
#include "elastic/layers/batchnorm.hpp"
#include "elastic/layers/conv.hpp"
#include "elastic/layers/dropout.hpp"
#include "elastic/layers/linear.hpp"
#include "elastic/models/model.hpp"

namespace elastic::blocks {

struct ConvSpec {
  std::int64_t in = 0, out = 0, kernel = 1, stride = 1, padding = -1, groups = 1;  // padding -1: kernel / 2
  bool bias = false;
  bool blocked = false;  // blocked output layout (Conv2dOptions::blocked_output)
};

inline ValueId conv(Graph& g, ValueId x, const std::string& name, const ConvSpec& s) {
  return g.add<Conv2d>({x}, name,
                       Conv2dOptions{.in_channels = s.in,
                                     .out_channels = s.out,
                                     .kernel_h = s.kernel,
                                     .kernel_w = s.kernel,
                                     .stride = s.stride,
                                     .padding = s.padding < 0 ? s.kernel / 2 : s.padding,
                                     .groups = s.groups,
                                     .bias = s.bias,
                                     .blocked_output = s.blocked});
}

// conv `conv_name`, batch norm `bn_name`, then the activation if any: inside the
// batch norm node when it fuses there (relu, relu6), else a node `bn_name`_act.
inline ValueId conv_bn(Graph& g, ValueId x, const std::string& conv_name, const std::string& bn_name, const ConvSpec& s,
                       std::optional<Activation> act) {
  const bool fused = act && BatchNorm2d::fuses(*act);
  x = g.add<BatchNorm2d>({conv(g, x, conv_name, s)}, bn_name,
                         BatchNorm2dOptions{.num_features = s.out, .activation = fused ? act : std::nullopt});
  if (act && !fused) x = g.add<Eltwise>({x}, bn_name + "_act", *act);
  return x;
}

// The classifier of a fine-tuning run: dropout `dropout_name` (rate
// o.dropout, or `default_rate` when unset), then linear `name` from `features`
// to the model's classes. Returns the logits.
inline ValueId classifier(Graph& g, ValueId x, const std::string& dropout_name, const std::string& name,
                          std::int64_t features, const ModelOptions& o, float default_rate = 0.2f) {
  x = g.add<Dropout>({x}, dropout_name, o.dropout.value_or(default_rate), o.seed);
  return g.add<Linear>({x}, name, LinearOptions{.in_features = features, .out_features = o.num_classes});
}

}  // namespace elastic::blocks
