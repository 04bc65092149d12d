// Conv2d as torch.nn.Conv2d (stride, padding, dilation, groups incl. depthwise,
// optional bias) on oneDNN's convolution primitives: forward, backward_data and
// backward_weights (weights and bias in one kernel: one selection unit). A 1x1
// stride-1 convolution between channels-last images runs as matmuls instead.
// Params keep torchvision's layout (out, in/groups, kh, kw) in fp32; where a
// primitive prefers a blocked weight layout, or bf16 (a bf16 graph), the node
// reorders: for the forward's into a DerivedWeight (kept while frozen; which
// backward_data reuses when it wants the same layout), for the other passes
// into the graph's shared transient buffers. Weight and bias gradients are
// always fp32. A frozen batch norm after it can fold into its forward
// (link_map).
#pragma once

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <Eigen/Core>

#include "elastic/graph/node.hpp"

namespace elastic {

struct Conv2dOptions {
  std::int64_t in_channels = 0, out_channels = 0;
  std::int64_t kernel_h = 1, kernel_w = 1;
  std::int64_t stride = 1, padding = 0, dilation = 1, groups = 1;
  bool bias = true;
  // Output in the blocked layout (blocked_activation_desc) instead of channels-last.
  bool blocked_output = false;
};

class Conv2d final : public Node {
 public:
  Conv2d(std::string name, Conv2dOptions o) : Node(std::move(name)), o_(o) {
    if (o.in_channels <= 0 || o.out_channels <= 0 || o.kernel_h <= 0 || o.kernel_w <= 0 || o.stride <= 0 ||
        o.padding < 0 || o.dilation <= 0 || o.groups <= 0)
      fail("layer '{}' (conv2d): channels, kernel, stride, dilation and groups must be positive, padding >= 0",
           this->name());
    if (o.in_channels % o.groups || o.out_channels % o.groups)
      fail("layer '{}' (conv2d): in_channels {} and out_channels {} must be multiples of groups {}", this->name(),
           o.in_channels, o.out_channels, o.groups);
  }

  std::string_view type() const override { return "conv2d"; }
  const Conv2dOptions& options() const { return o_; }

  void declare(ParamStore& store) override {
    const auto fan_in = o_.in_channels / o_.groups * o_.kernel_h * o_.kernel_w;
    weight_ = add_param(store, "weight", {o_.out_channels, o_.in_channels / o_.groups, o_.kernel_h, o_.kernel_w},
                        ParamRole::weight, Init::fan_in(fan_in));
    if (o_.bias) bias_ = add_param(store, "bias", {o_.out_channels}, ParamRole::bias, Init::fan_in(fan_in));
  }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore& store) override {
    using namespace dnnl;
    using tag = memory::format_tag;
    expect(in.size() == 1, "expects one input");
    const auto x = in[0].dims();  // (N, C, H, W)
    expect(x.size() == 4 && x[1] == o_.in_channels,
           fmt::format("expects input (N, {}, H, W), got {}", o_.in_channels, to_string(x)));
    const auto out_size = [&](std::int64_t size, std::int64_t k) {
      return (size + 2 * o_.padding - o_.dilation * (k - 1) - 1) / o_.stride + 1;
    };
    const Shape y{x[0], o_.out_channels, out_size(x[2], o_.kernel_h), out_size(x[3], o_.kernel_w)};
    expect(y[2] > 0 && y[3] > 0, fmt::format("input {} is too small for the kernel", to_string(x)));
    const auto dt = in[0].data_type();  // f32, or bf16 in a bf16 graph
    set_output(o_.blocked_output ? blocked_activation_desc(y, dt) : activation_desc(y, dt));

    const auto& eng = ctx.engine();
    fwd_w_ = {};
    fused_ = {};
    map_ = nullptr;
    fold_on_ = false;
    conv_desc_.reset();
    bias_value_ = o_.bias ? store[bias_].value : nullptr;
    host_dw_ = false;
    bwd_w_reorder_ = dw_reorder_ = {};
    const memory::dims strides{o_.stride, o_.stride}, dilates{o_.dilation - 1, o_.dilation - 1},
        pad{o_.padding, o_.padding};
    // The user weight layout: torchvision's (out, in/g, kh, kw), as goihw when grouped.
    const memory::desc user_w_md = o_.groups == 1
                                       ? memory::desc({o_.out_channels, o_.in_channels, o_.kernel_h, o_.kernel_w},
                                                      memory::data_type::f32, tag::oihw)
                                       : memory::desc({o_.groups, o_.out_channels / o_.groups,
                                                       o_.in_channels / o_.groups, o_.kernel_h, o_.kernel_w},
                                                      memory::data_type::f32, tag::goihw);
    const memory::desc any_w(user_w_md.dims(), dt, tag::any),
        any_dw(user_w_md.dims(), memory::data_type::f32, tag::any);
    const memory::desc bias_md =
        o_.bias ? memory::desc({o_.out_channels}, memory::data_type::f32, tag::a) : memory::desc();
    const auto& src_md = in[0];
    const auto& dst_md = output_desc();
    if (o_.kernel_h == 1 && o_.kernel_w == 1 && o_.stride == 1 && o_.padding == 0 && o_.groups == 1 &&
        src_md == activation_desc(x, dt) && dst_md == activation_desc(y, dt)) {
      setup_pointwise(x[0] * x[2] * x[3], dt, eng, store);
      return;
    }

    conv_desc_.emplace(prop_kind::forward_training, algorithm::convolution_direct, src_md, any_w, bias_md, dst_md,
                       strides, dilates, pad, pad);
    convolution_forward::primitive_desc fwd_pd(*conv_desc_, user_scratchpad(), eng);
    convolution_backward_data::primitive_desc bwd_data_pd(
        {algorithm::convolution_direct, src_md, any_w, dst_md, strides, dilates, pad, pad}, user_scratchpad(), eng,
        fwd_pd);
    convolution_backward_weights::primitive_desc bwd_w_pd(
        {algorithm::convolution_direct, src_md, any_dw, bias_md, dst_md, strides, dilates, pad, pad}, user_scratchpad(),
        eng, fwd_pd);
    // oneDNN 2.6 has no depthwise backward_weights kernel for images smaller
    // than about the kernel (MobileNetV2's last blocks at 32x32 inputs: 2x2 and
    // 1x1): it runs a dense grouped kernel that is 5-30x slower than this
    // loop. Such convolutions compute their weight gradient on the host.
    host_dw_ = o_.groups > 1 && o_.groups == o_.in_channels && o_.groups == o_.out_channels &&
               src_md == activation_desc(x, dt) && dst_md == activation_desc(y, dt) &&
               std::string_view(bwd_w_pd.impl_info_str()).find("dw") == std::string_view::npos;
    const Param& w = store[weight_];
    user_w_ = memory(user_w_md, eng, w.value);
    user_dw_ = grad_memory(weight_, user_w_md);
    memory fwd_w = user_w_;
    if (fwd_pd.weights_desc() != user_w_md) {
      fwd_w = memory(fwd_pd.weights_desc(), eng, static_cast<void*>(nullptr));
      fwd_w_ = DerivedWeight(user_w_, fwd_w, transient(fwd_pd.weights_desc(), kWeightCopySlot));
    }
    // Backward-data reuses the forward's weights when it wants the same layout.
    // Its own layout's copy and the blocked weight gradient live only within
    // one pass, so they take the graph's shared transient buffer.
    memory bwd_w = fwd_w;
    if (bwd_data_pd.weights_desc() != fwd_pd.weights_desc()) {
      bwd_w = transient(bwd_data_pd.weights_desc());
      bwd_w_reorder_ = reorder_call(user_w_, bwd_w);
    }
    if (host_dw_) {
      x_shape_ = x;
      y_shape_ = y;
      dw_acc_.assign(static_cast<std::size_t>(o_.kernel_h * o_.kernel_w * o_.out_channels), 0.0f);
      dy_row_.assign(static_cast<std::size_t>(o_.out_channels), 0.0f);
      dt_ = dt;
    }
    memory prim_dw = user_dw_;  // the host loop writes the param's gradient directly
    if (!host_dw_ && bwd_w_pd.diff_weights_desc() != user_w_md) {
      prim_dw = transient(bwd_w_pd.diff_weights_desc());
      dw_reorder_ = reorder_call(prim_dw, user_dw_);
    }
    Args fwd_args{{DNNL_ARG_SRC, src()}, {DNNL_ARG_WEIGHTS, fwd_w}, {DNNL_ARG_DST, dst()}};
    Args bwd_weights_args{{DNNL_ARG_SRC, src()}, {DNNL_ARG_DIFF_DST, diff_dst()}, {DNNL_ARG_DIFF_WEIGHTS, prim_dw}};
    if (o_.bias) {
      const Param& b = store[bias_];
      fwd_args[DNNL_ARG_BIAS] = memory(bias_md, eng, b.value);
      if (!host_dw_) bwd_weights_args[DNNL_ARG_DIFF_BIAS] = grad_memory(bias_, bias_md);
    }
    fwd_ = Call(convolution_forward(fwd_pd), fwd_args);
    fwd_args_ = fwd_args;
    fwd_impl_ = fwd_pd.impl_info_str();
    fwd_weights_md_ = fwd_pd.weights_desc();
    bwd_data_ = Call(convolution_backward_data(bwd_data_pd),
                     {{DNNL_ARG_DIFF_DST, diff_dst()}, {DNNL_ARG_WEIGHTS, bwd_w}, {DNNL_ARG_DIFF_SRC, diff_src()}});
    if (!host_dw_) bwd_weights_ = Call(convolution_backward_weights(bwd_w_pd), bwd_weights_args);
  }

  void forward(const RunCtx& run) override {
    const bool fold = fold_on_ && map_->map_applies(run);
    if (!fold) {
      fwd_w_.before_forward(run);
      fwd_(run.stream);
      return;
    }
    map_->prepare_map();
    if (o_.bias) {  // the map applied to the bias: b * scale + shift
      const float *b = bias_value_, *scale = ptr_as<float>(map_->map_scale()),
                  *shift = ptr_as<float>(map_->map_shift());
      for (std::size_t k = 0; k < fold_bias_.size(); ++k) fold_bias_[k] = b[k] * scale[k] + shift[k];
    }
    fwd_w_.before_forward(run, true);
    fused_(run.stream);
  }

  // Folding the batch norm after it (FoldableMap) while nothing reads this
  // node's own output or needs its backward: the forward kernel then reads
  // weights scaled per output channel by the map's scale (its frozen copy,
  // filled scaled by oneDNN's reorder with output scales), adds the map's
  // shift as its bias and applies the clamp as a post-op (ReLU or clip),
  // writing the map's output. Only a convolution that keeps a copy of its
  // weights folds (a bf16 graph's, or a re-laid-out one); refused where oneDNN
  // would pick another implementation or weight layout for the fused kernel.
  bool link_map(FoldableMap& map, const dnnl::memory& map_dst, Context& ctx) override {
    using namespace dnnl;
    using tag = memory::format_tag;
    fused_ = {};
    map_ = nullptr;
    fold_on_ = false;
    if (!fwd_w_ || host_dw_ || map_dst.get_desc() != output_desc()) return false;
    const auto& eng = ctx.engine();
    const auto f32 = memory::data_type::f32;
    const memory::dim K = o_.out_channels;
    post_ops po;
    const float lo = map.map_lo(), hi = map.map_hi();
    if (lo == 0.0f && std::isinf(hi))
      po.append_eltwise(1.0f, algorithm::eltwise_relu, 0.0f, 0.0f);
    else if (std::isfinite(lo) || std::isfinite(hi))
      po.append_eltwise(1.0f, algorithm::eltwise_clip, lo, hi);
    primitive_attr attr = user_scratchpad();
    attr.set_post_ops(po);
    const memory::desc bias_md = pointwise_ ? memory::desc({1, K}, f32, tag::ab) : memory::desc({K}, f32, tag::a);
    fold_bias_.assign(o_.bias ? static_cast<std::size_t>(K) : 0, 0.0f);
    const memory bias(bias_md, eng, o_.bias ? fold_bias_.data() : map.map_shift().get_data_handle());
    // The weights' output channels: dim 0, or dims 0 and 1 of grouped (g, o/g, ...) weights.
    const int mask = user_w_.get_desc().dims().size() == 5 ? 3 : 1;
    primitive_attr scales = user_scratchpad();
    scales.set_output_scales(mask, {DNNL_RUNTIME_F32_VAL});
    const memory scale(memory::desc({K}, f32, tag::a), eng, map.map_scale().get_data_handle());
    Args args = fwd_args_;
    args[DNNL_ARG_BIAS] = bias;
    try {
      const memory& kernel_w = pointwise_ ? wv_ : fwd_args_.at(DNNL_ARG_WEIGHTS);
      const reorder::primitive_desc fill(eng, user_w_.get_desc(), eng, kernel_w.get_desc(), scales);
      if (pointwise_) {
        const memory::desc& X = x_.get_desc();
        const matmul::primitive_desc pd(matmul::desc(X, wt_.get_desc(), bias_md, y_.get_desc()), attr, eng);
        if (fwd_impl_ != pd.impl_info_str()) return false;
        fold_y_ = memory(y_.get_desc(), eng, static_cast<void*>(nullptr));
        args[DNNL_ARG_DST] = fold_y_;
        fused_ = Call(matmul(pd), args);
      } else {
        auto d = *conv_desc_;
        d.data.bias_desc = bias_md.data;
        const convolution_forward::primitive_desc pd(d, attr, eng);
        if (fwd_impl_ != pd.impl_info_str() || fwd_weights_md_ != pd.weights_desc()) return false;
        args[DNNL_ARG_DST] = map_dst;
        fused_ = Call(convolution_forward(pd), args);
      }
      fwd_w_.set_scaled_fill(Call(
          reorder(fill), {{DNNL_ARG_FROM, user_w_}, {DNNL_ARG_TO, kernel_w}, {DNNL_ARG_ATTR_OUTPUT_SCALES, scale}}));
    } catch (const dnnl::error&) {
      fused_ = {};
      return false;  // no kernel or reorder for this combination
    }
    fold_dst_ = map_dst;
    map_ = &map;
    return true;
  }
  void fold_map(bool on) override {
    fold_on_ = on && map_ != nullptr;
    if (fold_on_ && pointwise_) fold_y_.set_data_handle(fold_dst_.get_data_handle());
  }
  // Whether the next forward applies the linked map (while it applies).
  bool map_folded() const { return fold_on_; }

  void backward_data(const RunCtx& run) override {
    if (!has_diff_src()) return;
    if (bwd_w_reorder_)
      bwd_w_reorder_(run.stream);
    else
      fwd_w_.before_backward(run);
    bwd_data_(run.stream);
  }

  void backward_weights(const RunCtx& run) override {
    if (host_dw_) {
      host_depthwise_weight_grad();
      return;
    }
    bwd_weights_(run.stream);
    if (dw_reorder_) dw_reorder_(run.stream);
  }

  Reads weights_reads() const override { return {.inputs = true}; }
  // Whether the weight gradient is computed by the host loop (a depthwise
  // convolution oneDNN has no depthwise backward_weights kernel for).
  bool host_weight_grad() const { return host_dw_; }
  // Whether it runs as matmuls (a 1x1 stride-1 convolution between channels-last images).
  bool pointwise() const { return pointwise_; }
  std::size_t weight_copy_bytes() const override { return fwd_w_.bytes(); }
  std::size_t frozen_copy_bytes() const override { return fwd_w_.frozen_bytes(); }

 protected:
  void on_bind() override {
    fwd_w_.bind(trained());
    if (!pointwise_) return;
    if (dt_ != dnnl::memory::data_type::f32) wt_.set_data_handle(wv_.get_data_handle());  // the same bf16 copy
    x_.set_data_handle(src().get_data_handle());
    dx_.set_data_handle(diff_src().get_data_handle());
    y_.set_data_handle(dst().get_data_handle());
    dy_.set_data_handle(diff_dst().get_data_handle());
    dyt_.set_data_handle(diff_dst().get_data_handle());
  }

 private:
  // A 1x1, stride-1 convolution between channels-last images is a matrix
  // product of the (N*H*W, C) input with the (K, C) weight, which oneDNN's
  // matmul reads in torchvision's layout as it is (transposed through strides):
  // no weight or gradient is ever re-laid-out (in bf16, the weight is
  // converted into a bf16 copy of the same layout).
  //   forward:          Y (M, K)  = X (M, C) W^T (+ bias)
  //   backward_data:    dX (M, C) = dY (M, K) W
  //   backward_weights: dW (K, C) = dY^T X;  d bias = column sums of dY
  //                     (an inner product's backward_weights when there is a bias)
  void setup_pointwise(std::int64_t rows, dnnl::memory::data_type dt, const dnnl::engine& eng, ParamStore& store) {
    using namespace dnnl;
    using tag = memory::format_tag;
    const auto f32 = memory::data_type::f32;
    const std::int64_t C = o_.in_channels, K = o_.out_channels;
    const memory::desc X({rows, C}, dt, tag::ab), Y({rows, K}, dt, tag::ab), W({K, C}, dt, tag::ab),
        Wt({C, K}, dt, tag::ba), DYt({K, rows}, dt, tag::ba), B({1, K}, f32, tag::ab), dW({K, C}, f32, tag::ab);
    pointwise_ = true;
    for (auto* m : {&x_, &dx_}) *m = memory(X, eng, static_cast<void*>(nullptr));
    for (auto* m : {&y_, &dy_}) *m = memory(Y, eng, static_cast<void*>(nullptr));
    dyt_ = memory(DYt, eng, static_cast<void*>(nullptr));
    const Param& w = store[weight_];
    // The weight the kernels read: the param itself in fp32, a bf16 copy (one
    // buffer, seen as W and as W^T) otherwise.
    dt_ = dt;
    wt_ = memory(Wt, eng, w.value);
    wv_ = memory(W, eng, w.value);
    user_w_ = memory(dW, eng, w.value);
    if (dt != f32) fwd_w_ = DerivedWeight(user_w_, wv_, transient(W, kWeightCopySlot));
    const memory &wt = wt_, &wv = wv_;
    Args fwd_args{{DNNL_ARG_SRC, x_}, {DNNL_ARG_WEIGHTS, wt}, {DNNL_ARG_DST, y_}};
    if (o_.bias) fwd_args[DNNL_ARG_BIAS] = memory(B, eng, store[bias_].value);
    const matmul::primitive_desc fwd(o_.bias ? matmul::desc(X, Wt, B, Y) : matmul::desc(X, Wt, Y), user_scratchpad(),
                                     eng);
    const matmul::primitive_desc bwd_data(matmul::desc(Y, W, X), user_scratchpad(), eng);
    fwd_ = Call(matmul(fwd), fwd_args);
    fwd_args_ = fwd_args;
    fwd_impl_ = fwd.impl_info_str();
    bwd_data_ = Call(matmul(bwd_data), {{DNNL_ARG_SRC, dy_}, {DNNL_ARG_WEIGHTS, wv}, {DNNL_ARG_DST, dx_}});
    if (!o_.bias) {
      const matmul::primitive_desc bwd_weights(matmul::desc(DYt, X, dW), user_scratchpad(), eng);
      bwd_weights_ = Call(matmul(bwd_weights),
                          {{DNNL_ARG_SRC, dyt_}, {DNNL_ARG_WEIGHTS, x_}, {DNNL_ARG_DST, grad_memory(weight_, dW)}});
      return;
    }
    // With a bias, the weight gradient is an inner product's backward_weights,
    // which sums the bias gradient in the same kernel and is as fast as the
    // matmul (benchmarks/linear_kernels): one kernel, no separate sum.
    const memory::desc b({K}, f32, tag::a);
    const inner_product_forward::primitive_desc hint({prop_kind::forward_training, X, W, b, Y}, user_scratchpad(), eng);
    const inner_product_backward_weights::primitive_desc bwd_weights({X, dW, b, Y}, user_scratchpad(), eng, hint);
    bwd_weights_ = Call(inner_product_backward_weights(bwd_weights), {{DNNL_ARG_SRC, x_},
                                                                      {DNNL_ARG_DIFF_DST, dy_},
                                                                      {DNNL_ARG_DIFF_WEIGHTS, grad_memory(weight_, dW)},
                                                                      {DNNL_ARG_DIFF_BIAS, grad_memory(bias_, b)}});
  }

  // dW (C, 1, KH, KW) (and d bias) of a depthwise convolution from the
  // channels-last input X (N, H, W, C) and output gradient dY (N, OH, OW, C):
  // dW[c, i, j] = sum over n, oh, ow of dY[n, oh, ow, c] X[n, oh*s - p + i*d, ow*s - p + j*d, c],
  // summed in fp32 per tap over a row of channels (vectorized), then written
  // into the param's layout.
  void host_depthwise_weight_grad() {
    const std::int64_t N = x_shape_[0], H = x_shape_[2], W = x_shape_[3], C = o_.out_channels;
    const std::int64_t OH = y_shape_[2], OW = y_shape_[3], KH = o_.kernel_h, KW = o_.kernel_w;
    using Row = Eigen::Map<Eigen::ArrayXf>;
    Row dy_row(dy_row_.data(), C);
    std::fill(dw_acc_.begin(), dw_acc_.end(), 0.0f);
    float* db = o_.bias ? grad_of(bias_) : nullptr;
    if (db) std::fill(db, db + C, 0.0f);
    with_element(dt_, [&]<class T>(std::type_identity<T>) {
      using In = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;
      const T* x = ptr_as<T>(src());
      const T* dy = ptr_as<T>(diff_dst());
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t oh = 0; oh < OH; ++oh)
          for (std::int64_t ow = 0; ow < OW; ++ow) {
            dy_row = In(dy + ((n * OH + oh) * OW + ow) * C, C).template cast<float>();
            if (db) Row(db, C) += dy_row;
            for (std::int64_t i = 0; i < KH; ++i) {
              const std::int64_t h = oh * o_.stride - o_.padding + i * o_.dilation;
              if (h < 0 || h >= H) continue;
              for (std::int64_t j = 0; j < KW; ++j) {
                const std::int64_t w = ow * o_.stride - o_.padding + j * o_.dilation;
                if (w < 0 || w >= W) continue;
                Row(dw_acc_.data() + (i * KW + j) * C, C) +=
                    dy_row * In(x + ((n * H + h) * W + w) * C, C).template cast<float>();
              }
            }
          }
    });
    float* dw = grad_of(weight_);
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t t = 0; t < KH * KW; ++t) dw[c * KH * KW + t] = dw_acc_[std::size_t(t * C + c)];
  }

  Conv2dOptions o_;
  int weight_ = -1, bias_ = -1;
  dnnl::memory user_w_, user_dw_;  // torchvision layout, over the param arenas
  Call fwd_, bwd_data_, bwd_weights_;
  DerivedWeight fwd_w_;                 // the forward's weights when not the param itself
  Call bwd_w_reorder_, dw_reorder_;     // empty when layouts agree
  bool pointwise_ = false;              // 1x1 stride 1 as matmuls (setup_pointwise)
  dnnl::memory x_, dx_, y_, dy_, dyt_;  // its 2-D views of the bound buffers
  dnnl::memory wv_, wt_;                // its weights as W (K, C) and W^T (C, K)
  dnnl::memory::data_type dt_ = dnnl::memory::data_type::f32;
  bool host_dw_ = false;  // depthwise weight gradient on the host (host_depthwise_weight_grad)
  Shape x_shape_, y_shape_;
  std::vector<float> dw_acc_, dy_row_;  // per-tap sums (KH*KW, C); one dY row in fp32
  // The forward as set up, for link_map to build the fused kernel from.
  std::optional<dnnl::convolution_forward::desc> conv_desc_;
  Args fwd_args_;
  std::string fwd_impl_;
  dnnl::memory::desc fwd_weights_md_;
  // Folding (link_map): the fused forward, the linked map, its output (and a
  // 2-D view of it for the matmul), the folded bias (with a bias of its own),
  // and whether the fold is on.
  Call fused_;
  FoldableMap* map_ = nullptr;
  dnnl::memory fold_dst_, fold_y_;
  std::vector<float> fold_bias_;
  const float* bias_value_ = nullptr;
  bool fold_on_ = false;
};

}  // namespace elastic
