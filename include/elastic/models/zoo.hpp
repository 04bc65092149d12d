// The model registry: builds a model by the name the command line uses.
#pragma once

#include <string_view>

#include "elastic/models/mobilenet.hpp"
#include "elastic/models/resnet.hpp"
#include "elastic/models/vgg.hpp"
#include "elastic/models/vit.hpp"

namespace elastic {

inline constexpr std::string_view kModelNames[] = {"resnet50", "vgg16", "mobilenetv2", "vit"};

inline Model build_model(std::string_view name, Context& ctx, const ModelOptions& o) {
  if (o.num_classes < 1) usage_fail("--num_classes must be at least 1, got {}", o.num_classes);
  if (o.batch < 1) usage_fail("--batch_size must be at least 1, got {}", o.batch);
  if (name == "resnet50") return resnet50(ctx, o);
  if (name == "vgg16") return vgg16(ctx, o);
  if (name == "mobilenetv2") return mobilenetv2(ctx, o);
  if (name == "vit") return vit(ctx, o);
  usage_fail("--model_name '{}' is not one of resnet50, vgg16, mobilenetv2, vit", name);
}

}  // namespace elastic
