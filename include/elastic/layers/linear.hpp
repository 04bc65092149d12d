// Linear as torch.nn.Linear: y = x W^T + b, W (out, in) in torch's layout.
// Forward is oneDNN's matmul reading W^T through strides (its brgemm kernel;
// the inner product's gemm runs this product up to 1.3x slower in fp32,
// benchmarks/linear_kernels), or in bf16 on a middle count of rows the inner
// product (forward_on_inner_product); backward_data and backward_weights
// (with the bias gradient in the same kernel) are oneDNN's inner product
// primitives: as fast as matmuls there, with no separate bias sum. No weight is
// re-laid-out (a bf16 graph's kernels read a bf16 copy of the same layout).
// Token-wise 3-D input (N, T, in) runs as N*T rows through 2-D views of the
// same buffers.
#pragma once

#include <string>

#include "elastic/graph/node.hpp"

namespace elastic {

struct LinearOptions {
  std::int64_t in_features = 0, out_features = 0;
  bool bias = true;
  // Param names after "<layer name>."; multi-head attention uses in_proj_weight/in_proj_bias.
  std::string weight_name = "weight", bias_name = "bias";
};

// Which kernel runs a linear forward of `rows` rows (benchmarks/linear_kernels,
// AMD Zen 5, 2 threads): in bf16 the inner product beats the matmul by 6-13% on
// ViT's four shapes (788 rows), and on the products of ResNet50's 1x1 shapes
// at 784 and 3136 rows, losing at 196 and 12544 (those convolutions run on
// their own matmuls, not here); in fp32 the inner product is at most 2% faster
// and 1.3x slower at 3072 -> 768, so the matmul stays.
inline bool forward_on_inner_product(dnnl::memory::data_type dt, std::int64_t rows) {
  return dt == dnnl::memory::data_type::bf16 && rows >= 512 && rows <= 4096;
}

class Linear final : public Node {
 public:
  Linear(std::string name, LinearOptions o) : Node(std::move(name)), o_(std::move(o)) {
    if (o_.in_features <= 0 || o_.out_features <= 0)
      fail("layer '{}' (linear): in_features and out_features must be positive", this->name());
  }

  std::string_view type() const override { return "linear"; }
  const LinearOptions& options() const { return o_; }

  void declare(ParamStore& store) override {
    weight_ = add_param(store, o_.weight_name, {o_.out_features, o_.in_features}, ParamRole::weight,
                        Init::fan_in(o_.in_features));
    if (o_.bias)
      bias_ = add_param(store, o_.bias_name, {o_.out_features}, ParamRole::bias, Init::fan_in(o_.in_features));
  }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore& store) override {
    using namespace dnnl;
    expect(in.size() == 1, "expects one input");
    Shape x = in[0].dims();
    expect((x.size() == 2 || x.size() == 3) && x.back() == o_.in_features,
           fmt::format("expects input (N, {0}) or (N, T, {0}), got {1}", o_.in_features, to_string(x)));
    Shape y = x;
    y.back() = o_.out_features;
    const auto dt = in[0].data_type();
    set_output(activation_desc(y, dt));
    const std::int64_t rows = numel(x) / o_.in_features;
    const auto& eng = ctx.engine();
    const auto f32 = memory::data_type::f32;
    const memory::desc x2({rows, o_.in_features}, dt, memory::format_tag::ab),
        y2({rows, o_.out_features}, dt, memory::format_tag::ab),
        w({o_.out_features, o_.in_features}, dt, memory::format_tag::ab),
        dw({o_.out_features, o_.in_features}, f32, memory::format_tag::ab),
        b = o_.bias ? memory::desc({o_.out_features}, f32, memory::format_tag::a) : memory::desc();
    for (auto* m : {&x_, &dx_}) *m = memory(x2, eng, static_cast<void*>(nullptr));
    for (auto* m : {&y_, &dy_}) *m = memory(y2, eng, static_cast<void*>(nullptr));

    // The inner product's forward descriptor: the backward passes' hint, and the
    // forward itself where forward_on_inner_product says so.
    inner_product_forward::primitive_desc hint({prop_kind::forward_training, x2, w, b, y2}, user_scratchpad(), eng);
    inner_product_backward_data::primitive_desc bwd_d({x2, w, y2}, user_scratchpad(), eng, hint);
    inner_product_backward_weights::primitive_desc bwd_w({x2, dw, b, y2}, user_scratchpad(), eng, hint);
    const memory::desc wt({o_.in_features, o_.out_features}, dt, memory::format_tag::ba),
        b_row = o_.bias ? memory::desc({1, o_.out_features}, f32, memory::format_tag::ab) : memory::desc();
    const bool ip_forward = forward_on_inner_product(dt, rows);
    const Param& wp = store[weight_];
    const memory wg = grad_memory(weight_, dw);
    memory wv(w, eng, wp.value);
    w_ = {};
    if (dt != f32) {  // the kernels read a bf16 copy
      wv = memory(w, eng, static_cast<void*>(nullptr));
      w_ = DerivedWeight(memory(dw, eng, wp.value), wv, transient(w, kWeightCopySlot));
    }
    wv_ = wv;
    wt_ = memory(wt, eng, wp.value);  // W^T: the same buffer as wv_ (rebound in on_bind)
    Args fa{{DNNL_ARG_SRC, x_}, {DNNL_ARG_WEIGHTS, ip_forward ? wv : wt_}, {DNNL_ARG_DST, y_}};
    Args wa{{DNNL_ARG_SRC, x_}, {DNNL_ARG_DIFF_DST, dy_}, {DNNL_ARG_DIFF_WEIGHTS, wg}};
    if (o_.bias) {
      fa[DNNL_ARG_BIAS] = memory(ip_forward ? b : b_row, eng, store[bias_].value);
      wa[DNNL_ARG_DIFF_BIAS] = grad_memory(bias_, b);
    }
    if (ip_forward)
      fwd_ = Call(inner_product_forward(hint), fa);
    else
      fwd_ = Call(matmul(matmul::primitive_desc(o_.bias ? matmul::desc(x2, wt, b_row, y2) : matmul::desc(x2, wt, y2),
                                                user_scratchpad(), eng)),
                  fa);
    bwd_data_ = Call(inner_product_backward_data(bwd_d),
                     {{DNNL_ARG_DIFF_DST, dy_}, {DNNL_ARG_WEIGHTS, wv}, {DNNL_ARG_DIFF_SRC, dx_}});
    bwd_weights_ = Call(inner_product_backward_weights(bwd_w), wa);
  }

  void forward(const RunCtx& run) override {
    w_.before_forward(run);
    fwd_(run.stream);
  }
  void backward_data(const RunCtx& run) override {
    if (!has_diff_src()) return;
    w_.before_backward(run);
    bwd_data_(run.stream);
  }
  void backward_weights(const RunCtx& run) override { bwd_weights_(run.stream); }
  Reads weights_reads() const override { return {.inputs = true}; }
  std::size_t weight_copy_bytes() const override { return w_.bytes(); }
  std::size_t frozen_copy_bytes() const override { return w_.frozen_bytes(); }

 protected:
  void on_bind() override {
    w_.bind(trained());
    wt_.set_data_handle(wv_.get_data_handle());
    x_.set_data_handle(src().get_data_handle());
    dx_.set_data_handle(diff_src().get_data_handle());
    y_.set_data_handle(dst().get_data_handle());
    dy_.set_data_handle(diff_dst().get_data_handle());
  }

 private:
  LinearOptions o_;
  int weight_ = -1, bias_ = -1;
  dnnl::memory x_, dx_, y_, dy_;  // 2-D (rows, features) views of the bound buffers
  dnnl::memory wv_, wt_;          // the weight the kernels read, as W (out, in) and as W^T (in, out)
  Call fwd_, bwd_data_, bwd_weights_;
  DerivedWeight w_;  // bf16 weights (bf16 graphs only)
};

}  // namespace elastic
