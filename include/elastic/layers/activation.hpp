// Elementwise activations on oneDNN's eltwise primitives: ReLU, ReLU6 (clamp to
// [0, 6], MobileNetV2), the exact erf GELU (torch.nn.GELU's default, ViT),
// sigmoid, SiLU (x * sigmoid(x)), hardswish and hardsigmoid (MobileNetV3).
// Kinds that differentiate from their output (ReLU, ReLU6, sigmoid,
// hardsigmoid) do not keep their input for backward. oneDNN 2.6 has no
// hardsigmoid: it runs as clip(x / 6 + 1/2, 0, 1), a linear eltwise then a
// clip in place, and backward as the clip's backward then the same scaling.
#pragma once

#include "elastic/graph/node.hpp"

namespace elastic {

enum class Activation { relu, relu6, gelu, sigmoid, silu, hardswish, hardsigmoid };

// Everything that differs between the kinds, in one exhaustive switch (no
// default: -Werror=switch makes a kind added to the enum but not here a
// compile error; a value outside the enum is refused).
struct ActivationSpec {
  std::string_view name;
  dnnl::algorithm algorithm;
  float alpha = 0, beta = 0;
  bool uses_dst = false;  // backward from the output (the input need not be kept)
  // The algorithm applies to scale * x + shift (only with uses_dst: backward
  // then needs no input).
  float scale = 1, shift = 0;
};

inline ActivationSpec activation_spec(Activation kind) {
  switch (kind) {
    case Activation::relu:
      return {"relu", dnnl::algorithm::eltwise_relu_use_dst_for_bwd, 0, 0, true};
    case Activation::relu6:
      return {"relu6", dnnl::algorithm::eltwise_clip_v2_use_dst_for_bwd, 0, 6, true};
    case Activation::gelu:
      return {"gelu", dnnl::algorithm::eltwise_gelu_erf, 0, 0, false};
    case Activation::sigmoid:
      return {"sigmoid", dnnl::algorithm::eltwise_logistic_use_dst_for_bwd, 0, 0, true};
    case Activation::silu:
      return {"silu", dnnl::algorithm::eltwise_swish, 1, 0, false};
    case Activation::hardswish:
      return {"hardswish", dnnl::algorithm::eltwise_hardswish, 0, 0, false};
    case Activation::hardsigmoid:
      return {"hardsigmoid", dnnl::algorithm::eltwise_clip_v2_use_dst_for_bwd, 0, 1, true, 1.0f / 6, 0.5f};
  }
  fail("activation kind {} is not one of relu, relu6, gelu, sigmoid, silu, hardswish, hardsigmoid",
       static_cast<int>(kind));
}

class Eltwise final : public Node {
 public:
  Eltwise(std::string name, Activation kind) : Node(std::move(name)), kind_(kind), spec_(activation_spec(kind)) {}

  std::string_view type() const override { return spec_.name; }
  Activation kind() const { return kind_; }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    using namespace dnnl;
    expect(in.size() == 1, "expects one input");
    set_output(in[0]);
    const auto [name, alg, alpha, beta, uses_dst, scale, shift] = spec_;
    const auto& eng = ctx.engine();
    const bool linear = scale != 1 || shift != 0;
    expect(!linear || uses_dst, "a scaled input needs an activation that differentiates from its output");
    eltwise_forward::primitive_desc fwd({prop_kind::forward_training, alg, in[0], alpha, beta}, user_scratchpad(), eng);
    eltwise_backward::primitive_desc bwd({alg, in[0], in[0], alpha, beta}, user_scratchpad(), eng, fwd);
    // With a scaled input the activation runs in place on the scaled values.
    fwd_ = Call(eltwise_forward(fwd), {{DNNL_ARG_SRC, linear ? dst() : src()}, {DNNL_ARG_DST, dst()}});
    bwd_ = Call(eltwise_backward(bwd), {{uses_dst ? DNNL_ARG_DST : DNNL_ARG_SRC, uses_dst ? dst() : src()},
                                        {DNNL_ARG_DIFF_DST, diff_dst()},
                                        {DNNL_ARG_DIFF_SRC, diff_src()}});
    scale_in_ = scale_grad_ = {};
    if (linear) {
      const auto linear_call = [&](float a, float b, const memory& from, const memory& to) {
        eltwise_forward::primitive_desc pd({prop_kind::forward_inference, algorithm::eltwise_linear, in[0], a, b},
                                           user_scratchpad(), eng);
        return Call(eltwise_forward(pd), {{DNNL_ARG_SRC, from}, {DNNL_ARG_DST, to}});
      };
      scale_in_ = linear_call(scale, shift, src(), dst());
      scale_grad_ = linear_call(scale, 0, diff_src(), diff_src());
    }
  }

  void forward(const RunCtx& run) override {
    if (scale_in_) scale_in_(run.stream);
    fwd_(run.stream);
  }
  void backward_data(const RunCtx& run) override {
    if (!has_diff_src()) return;
    bwd_(run.stream);
    if (scale_grad_) scale_grad_(run.stream);
  }
  Reads data_reads() const override { return spec_.uses_dst ? Reads{.output = true} : Reads{.inputs = true}; }

 private:
  Activation kind_;
  ActivationSpec spec_;
  Call fwd_, bwd_;
  Call scale_in_, scale_grad_;  // scale * x + shift before, its scale on the gradient after
};

}  // namespace elastic
