// LayerNorm as torch.nn.LayerNorm over the last dimension, for (N, E) and
// token-wise (N, T, E) inputs, on oneDNN's layer normalization primitives.
// Like BatchNorm2d: oneDNN 2.6 has no backward_data with a scale, so
// backward_data runs its full backward (gamma/beta gradients to scratch), and
// backward_weights computes the two per-feature sums itself from the saved
// per-row mean and variance. Values are f32 or bf16; statistics fp32.
#pragma once

#include <cmath>
#include <vector>

#include "elastic/graph/node.hpp"
#include "elastic/layers/affine_grads.hpp"

namespace elastic {

struct LayerNormOptions {
  std::int64_t normalized_shape = 0;  // size of the last dimension
  float eps = 1e-5f;
};

class LayerNorm final : public Node {
 public:
  LayerNorm(std::string name, LayerNormOptions o) : Node(std::move(name)), o_(o) {
    if (o.normalized_shape <= 0) fail("layer '{}' (layernorm): normalized_shape must be positive", this->name());
  }

  std::string_view type() const override { return "layernorm"; }

  void declare(ParamStore& store) override {
    weight_ = add_param(store, "weight", {o_.normalized_shape}, ParamRole::norm_scale, Init::one());
    bias_ = add_param(store, "bias", {o_.normalized_shape}, ParamRole::norm_shift, Init::zero());
  }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore& store) override {
    using namespace dnnl;
    using flags = normalization_flags;
    expect(in.size() == 1, "expects one input");
    const auto x = in[0].dims();
    const std::int64_t E = o_.normalized_shape;
    expect((x.size() == 2 || x.size() == 3) && x.back() == E,
           fmt::format("expects input (N, {0}) or (N, T, {0}), got {1}", E, to_string(x)));
    set_output(in[0]);
    rows_ = numel(x) / E;
    const auto& eng = ctx.engine();
    const auto f32 = memory::data_type::f32;
    const memory::desc data({rows_, E}, in[0].data_type(), memory::format_tag::ab),
        stat({rows_}, f32, memory::format_tag::a), feat({E}, f32, memory::format_tag::a);
    for (auto* m : {&x_, &y_, &dx_, &dy_}) *m = memory(data, eng, static_cast<void*>(nullptr));
    mean_.assign(static_cast<std::size_t>(rows_), 0.0f);
    var_.assign(static_cast<std::size_t>(rows_), 0.0f);
    scratch_.assign(static_cast<std::size_t>(2 * E), 0.0f);
    const memory mean(stat, eng, mean_.data()), var(stat, eng, var_.data());
    const memory scale(feat, eng, store[weight_].value), shift(feat, eng, store[bias_].value);
    const memory dscale(feat, eng, scratch_.data()), dshift(feat, eng, scratch_.data() + E);
    const auto affine = flags::use_scale | flags::use_shift;
    layer_normalization_forward::primitive_desc fwd({prop_kind::forward_training, data, stat, o_.eps, affine},
                                                    user_scratchpad(), eng);
    layer_normalization_backward::primitive_desc bwd({prop_kind::backward, data, data, stat, o_.eps, affine},
                                                     user_scratchpad(), eng, fwd);
    fwd_ = Call(layer_normalization_forward(fwd), {{DNNL_ARG_SRC, x_},
                                                   {DNNL_ARG_DST, y_},
                                                   {DNNL_ARG_SCALE, scale},
                                                   {DNNL_ARG_SHIFT, shift},
                                                   {DNNL_ARG_MEAN, mean},
                                                   {DNNL_ARG_VARIANCE, var}});
    bwd_ = Call(layer_normalization_backward(bwd), {{DNNL_ARG_SRC, x_},
                                                    {DNNL_ARG_DIFF_DST, dy_},
                                                    {DNNL_ARG_DIFF_SRC, dx_},
                                                    {DNNL_ARG_SCALE, scale},
                                                    {DNNL_ARG_SHIFT, shift},
                                                    {DNNL_ARG_MEAN, mean},
                                                    {DNNL_ARG_VARIANCE, var},
                                                    {DNNL_ARG_DIFF_SCALE, dscale},
                                                    {DNNL_ARG_DIFF_SHIFT, dshift}});
    rstd_.assign(static_cast<std::size_t>(rows_), 0.0f);
    grads_.reserve(E);
  }

  void forward(const RunCtx& run) override { fwd_(run.stream); }
  void backward_data(const RunCtx& run) override {
    if (has_diff_src()) bwd_(run.stream);
  }

  // d gamma[e] = sum over rows of dy * (x - mean[r]) / sqrt(var[r] + eps); d beta[e] = sum dy.
  void backward_weights(const RunCtx& run) override {
    run.stream.wait();
    const std::int64_t E = o_.normalized_shape;
    const float* mean = mean_.data();
    for (std::size_t r = 0; r < rstd_.size(); ++r)
      rstd_[r] = static_cast<float>(1.0 / std::sqrt(double(var_[r]) + o_.eps));
    const float* rstd = rstd_.data();
    with_element(x_.get_desc().data_type(), [&]<class T>(std::type_identity<T>) {
      const T* x = ptr_as<T>(x_);
      grads_.run(
          rows_, ptr_as<T>(dy_),
          [=](std::int64_t r, std::int64_t e)
              ELASTIC_INLINE { return (host::to_float(x[r * E + e]) - mean[r]) * rstd[r]; },
          dgamma_, dbeta_);
    });
  }

  Reads data_reads() const override { return {.inputs = true}; }
  Reads weights_reads() const override { return {.inputs = true}; }

 protected:
  void on_bind() override {
    dgamma_ = grad_of(weight_);
    dbeta_ = grad_of(bias_);
    x_.set_data_handle(src().get_data_handle());
    y_.set_data_handle(dst().get_data_handle());
    dx_.set_data_handle(diff_src().get_data_handle());
    dy_.set_data_handle(diff_dst().get_data_handle());
  }

 private:
  LayerNormOptions o_;
  int weight_ = -1, bias_ = -1;
  std::int64_t rows_ = 0;
  float *dgamma_ = nullptr, *dbeta_ = nullptr;
  dnnl::memory x_, y_, dx_, dy_;   // (rows, E) views of the bound buffers
  std::vector<float> mean_, var_;  // (rows) statistics of the last forward
  std::vector<float> scratch_;     // (2, E) gamma/beta gradients of backward_data, unused
  std::vector<float> rstd_;        // (rows) 1 / sqrt(var + eps)
  detail::AffineGrads grads_;
  Call fwd_, bwd_;
};

}  // namespace elastic
