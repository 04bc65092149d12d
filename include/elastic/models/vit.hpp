// ViT-B/16 as torchvision's vit_b_16: 16x16 patch embedding `conv_proj`, class
// token, position embedding sized to the input ((S/16)^2 + 1 tokens), 12
// pre-norm encoder layers (LayerNorm eps 1e-6, 12-head self-attention, GELU
// MLP named mlp.0/mlp.3), final `encoder.ln`, and the class-token head
// `heads.head` (after a dropout of rate 0 unless one is given: the reference's ViT head has none).
#pragma once

#include <fmt/format.h>

#include "elastic/layers/activation.hpp"
#include "elastic/layers/add.hpp"
#include "elastic/layers/attention.hpp"
#include "elastic/layers/conv.hpp"
#include "elastic/layers/layernorm.hpp"
#include "elastic/layers/linear.hpp"
#include "elastic/layers/tokens.hpp"
#include "elastic/models/blocks.hpp"
#include "elastic/models/model.hpp"

namespace elastic {

struct VitOptions {
  std::int64_t patch = 16, hidden = 768, layers = 12, heads = 12, mlp = 3072;
};

// torch.nn.MultiheadAttention (batch_first, self-attention) under `name`:
// in_proj_weight/in_proj_bias, the attention core, out_proj.
inline ValueId add_self_attention(Graph& g, ValueId x, const std::string& name, std::int64_t embed_dim,
                                  std::int64_t heads) {
  ValueId qkv = g.add<Linear>({x}, name,
                              LinearOptions{.in_features = embed_dim,
                                            .out_features = 3 * embed_dim,
                                            .weight_name = "in_proj_weight",
                                            .bias_name = "in_proj_bias"});
  ValueId o = g.add<ScaledDotProductAttention>({qkv}, name + ".core", heads);
  return g.add<Linear>({o}, name + ".out_proj", LinearOptions{.in_features = embed_dim, .out_features = embed_dim});
}

inline Model vit(Context& ctx, const ModelOptions& o, const VitOptions& v = {}) {
  if (o.input_size < v.patch || o.input_size % v.patch)
    fail("vit: input_size must be a positive multiple of {}, got {}", v.patch, o.input_size);
  auto g = std::make_unique<Graph>(ctx, o.precision);
  const ValueId images = g->input("images", {o.batch, 3, o.input_size, o.input_size});
  const std::int64_t side = o.input_size / v.patch, tokens = side * side, E = v.hidden;
  ValueId x = g->add<Conv2d>(
      {images}, "conv_proj",
      Conv2dOptions{.in_channels = 3, .out_channels = E, .kernel_h = v.patch, .kernel_w = v.patch, .stride = v.patch});
  x = g->add<PatchTokens>({x}, "patch_tokens");
  x = g->add<ClassTokenPosEmbed>({x}, "embed", E, tokens);
  const LayerNormOptions ln{.normalized_shape = E, .eps = 1e-6f};
  for (std::int64_t l = 0; l < v.layers; ++l) {
    const auto p = fmt::format("encoder.layers.encoder_layer_{}.", l);
    ValueId h = g->add<LayerNorm>({x}, p + "ln_1", ln);
    h = add_self_attention(*g, h, p + "self_attention", E, v.heads);
    x = g->add<Add>({h, x}, p + "add_1");
    h = g->add<LayerNorm>({x}, p + "ln_2", ln);
    h = g->add<Linear>({h}, p + "mlp.0", LinearOptions{.in_features = E, .out_features = v.mlp});
    h = g->add<Eltwise>({h}, p + "mlp.1", Activation::gelu);
    h = g->add<Linear>({h}, p + "mlp.3", LinearOptions{.in_features = v.mlp, .out_features = E});
    x = g->add<Add>({x, h}, p + "add_2");
  }
  x = g->add<LayerNorm>({x}, "encoder.ln", ln);
  x = g->add<SelectToken>({x}, "class_token_out", 0);
  const ValueId logits = blocks::classifier(*g, x, "dropout", "heads.head", E, o, 0.0f);
  Model m = finish_model("vit", std::move(g), images, logits, o.seed);
  m.head_prefixes = {"heads."};
  return m;
}

}  // namespace elastic
