// Elementwise activations on oneDNN's eltwise primitives: ReLU, ReLU6 (clamp to
// [0, 6], MobileNetV2) and the exact erf GELU (torch.nn.GELU's default, ViT).
// ReLU and ReLU6 differentiate from their output, so their input need not be
// kept for backward.
#pragma once

#include "elastic/graph/node.hpp"

namespace elastic {

enum class Activation { relu, relu6, gelu };

// Everything that differs between the kinds, in one exhaustive switch (no
// default: -Werror=switch makes a kind added to the enum but not here a
// compile error; a value outside the enum is refused).
struct ActivationSpec {
  std::string_view name;
  dnnl::algorithm algorithm;
  float alpha = 0, beta = 0;
  bool uses_dst = false;  // backward from the output (the input need not be kept)
};

inline ActivationSpec activation_spec(Activation kind) {
  switch (kind) {
    case Activation::relu:
      return {"relu", dnnl::algorithm::eltwise_relu_use_dst_for_bwd, 0, 0, true};
    case Activation::relu6:
      return {"relu6", dnnl::algorithm::eltwise_clip_v2_use_dst_for_bwd, 0, 6, true};
    case Activation::gelu:
      return {"gelu", dnnl::algorithm::eltwise_gelu_erf, 0, 0, false};
  }
  fail("activation kind {} is not one of relu, relu6, gelu", static_cast<int>(kind));
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
    const auto [name, alg, alpha, beta, uses_dst] = spec_;
    eltwise_forward::primitive_desc fwd({prop_kind::forward_training, alg, in[0], alpha, beta}, user_scratchpad(),
                                        ctx.engine());
    eltwise_backward::primitive_desc bwd({alg, in[0], in[0], alpha, beta}, user_scratchpad(), ctx.engine(), fwd);
    fwd_ = Call(eltwise_forward(fwd), {{DNNL_ARG_SRC, src()}, {DNNL_ARG_DST, dst()}});
    bwd_ = Call(eltwise_backward(bwd), {{uses_dst ? DNNL_ARG_DST : DNNL_ARG_SRC, uses_dst ? dst() : src()},
                                        {DNNL_ARG_DIFF_DST, diff_dst()},
                                        {DNNL_ARG_DIFF_SRC, diff_src()}});
  }

  void forward(const RunCtx& run) override { fwd_(run.stream); }
  void backward_data(const RunCtx& run) override {
    if (has_diff_src()) bwd_(run.stream);
  }
  Reads data_reads() const override { return spec_.uses_dst ? Reads{.output = true} : Reads{.inputs = true}; }

 private:
  Activation kind_;
  ActivationSpec spec_;
  Call fwd_, bwd_;
};

}  // namespace elastic
