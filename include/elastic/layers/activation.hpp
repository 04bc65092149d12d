// Elementwise activations on oneDNN's eltwise primitives: ReLU, ReLU6 (clamp to
// [0, 6], MobileNetV2) and the exact erf GELU (torch.nn.GELU's default, ViT).
// ReLU and ReLU6 differentiate from their output, so their input need not be
// kept for backward.
#pragma once

#include "elastic/graph/node.hpp"

namespace elastic {

enum class Activation { relu, relu6, gelu };

class Eltwise final : public Node {
 public:
  Eltwise(std::string name, Activation kind) : Node(std::move(name)), kind_(kind) {}

  std::string_view type() const override {
    switch (kind_) {
      case Activation::relu:
        return "relu";
      case Activation::relu6:
        return "relu6";
      default:
        return "gelu";
    }
  }
  Activation kind() const { return kind_; }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    using namespace dnnl;
    expect(in.size() == 1, "expects one input");
    set_output(in[0]);
    algorithm alg = algorithm::eltwise_gelu_erf;
    float alpha = 0, beta = 0;
    if (kind_ == Activation::relu) alg = algorithm::eltwise_relu_use_dst_for_bwd;
    if (kind_ == Activation::relu6) {
      alg = algorithm::eltwise_clip_v2_use_dst_for_bwd;
      beta = 6.0f;
    }
    eltwise_forward::primitive_desc fwd({prop_kind::forward_training, alg, in[0], alpha, beta}, user_scratchpad(),
                                        ctx.engine());
    eltwise_backward::primitive_desc bwd({alg, in[0], in[0], alpha, beta}, user_scratchpad(), ctx.engine(), fwd);
    fwd_ = Call(eltwise_forward(fwd), {{DNNL_ARG_SRC, src()}, {DNNL_ARG_DST, dst()}});
    bwd_ = Call(eltwise_backward(bwd), {{uses_dst() ? DNNL_ARG_DST : DNNL_ARG_SRC, uses_dst() ? dst() : src()},
                                        {DNNL_ARG_DIFF_DST, diff_dst()},
                                        {DNNL_ARG_DIFF_SRC, diff_src()}});
  }

  void forward(const RunCtx& run) override { fwd_(run.stream); }
  void backward_data(const RunCtx& run) override {
    if (has_diff_src()) bwd_(run.stream);
  }
  Reads data_reads() const override { return uses_dst() ? Reads{.output = true} : Reads{.inputs = true}; }

 private:
  bool uses_dst() const { return kind_ != Activation::gelu; }

  Activation kind_;
  Call fwd_, bwd_;
};

}  // namespace elastic
