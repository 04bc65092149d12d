// Pooling on oneDNN's pooling primitives: MaxPool2d and AvgPool2d as torch
// defines them (floor output size; max pooling ignores padding, average pooling
// counts it), and global average pooling to (N, C). Max pooling keeps oneDNN's
// workspace (the argmax) so its backward reads neither input nor output.
#pragma once

#include "elastic/graph/node.hpp"

namespace elastic {

struct PoolOptions {
  std::int64_t kernel_h = 2, kernel_w = 2;
  std::int64_t stride_h = 0, stride_w = 0;  // 0: the kernel size (torch's default)
  std::int64_t padding_h = 0, padding_w = 0;
};

namespace detail {

// One pooling node over (N, C, H, W) channels-last values, `max` or average.
class Pool2d : public Node {
 public:
  Pool2d(std::string name, PoolOptions o, bool max) : Node(std::move(name)), o_(o), max_(max) {
    if (o_.stride_h == 0) o_.stride_h = o_.kernel_h;
    if (o_.stride_w == 0) o_.stride_w = o_.kernel_w;
    if (o_.kernel_h <= 0 || o_.kernel_w <= 0 || o_.stride_h <= 0 || o_.stride_w <= 0 || o_.padding_h < 0 ||
        o_.padding_w < 0)
      fail("layer '{}' ({}): kernel and stride must be positive and padding non-negative", this->name(), type());
    if (2 * o_.padding_h > o_.kernel_h || 2 * o_.padding_w > o_.kernel_w)
      fail("layer '{}' ({}): padding must be at most half the kernel, as in torch", this->name(), type());
  }

  std::string_view type() const override { return max_ ? "maxpool2d" : "avgpool2d"; }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    using namespace dnnl;
    expect(in.size() == 1 && in[0].dims().size() == 4, "expects one (N, C, H, W) input");
    const auto x = in[0].dims();
    const std::int64_t oh = (x[2] + 2 * o_.padding_h - o_.kernel_h) / o_.stride_h + 1;
    const std::int64_t ow = (x[3] + 2 * o_.padding_w - o_.kernel_w) / o_.stride_w + 1;
    expect(x[2] + 2 * o_.padding_h >= o_.kernel_h && x[3] + 2 * o_.padding_w >= o_.kernel_w,
           fmt::format("input {} is smaller than the {}x{} kernel", to_string(x), o_.kernel_h, o_.kernel_w));
    set_output(activation_desc({x[0], x[1], oh, ow}));
    create(in[0], output_desc(), src(), dst(), diff_src(), diff_dst(), ctx);
  }

  void forward(const RunCtx& run) override { fwd_(run.stream); }
  void backward_data(const RunCtx& run) override {
    if (has_diff_src()) bwd_(run.stream);
  }

 protected:
  Pool2d(std::string name, bool max) : Node(std::move(name)), max_(max) {}

  // Pooling between memories of these descs (views of the node's own for global pooling).
  void create(const dnnl::memory::desc& in, const dnnl::memory::desc& out, const dnnl::memory& x,
              const dnnl::memory& y, const dnnl::memory& dx, const dnnl::memory& dy, Context& ctx) {
    using namespace dnnl;
    const auto alg = max_ ? algorithm::pooling_max : algorithm::pooling_avg_include_padding;
    const memory::dims strides{o_.stride_h, o_.stride_w}, kernel{o_.kernel_h, o_.kernel_w},
        pad{o_.padding_h, o_.padding_w};
    pooling_forward::primitive_desc fwd({prop_kind::forward_training, alg, in, out, strides, kernel, pad, pad},
                                        user_scratchpad(), ctx.engine());
    pooling_backward::primitive_desc bwd({alg, in, out, strides, kernel, pad, pad}, user_scratchpad(), ctx.engine(), fwd);
    Args fwd_args{{DNNL_ARG_SRC, x}, {DNNL_ARG_DST, y}};
    Args bwd_args{{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_SRC, dx}};
    if (max_) {
      workspace_ = memory(fwd.workspace_desc(), ctx.engine());
      fwd_args[DNNL_ARG_WORKSPACE] = workspace_;
      bwd_args[DNNL_ARG_WORKSPACE] = workspace_;
    }
    fwd_ = Call(pooling_forward(fwd), fwd_args);
    bwd_ = Call(pooling_backward(bwd), bwd_args);
  }

  PoolOptions o_;
  bool max_;
  dnnl::memory workspace_;  // max pooling's argmax, written by forward, read by backward
  Call fwd_, bwd_;
};

}  // namespace detail

// torch.nn.MaxPool2d (ceil_mode false, dilation 1).
class MaxPool2d final : public detail::Pool2d {
 public:
  MaxPool2d(std::string name, PoolOptions o) : Pool2d(std::move(name), o, true) {}
};

// torch.nn.AvgPool2d with its defaults (count_include_pad true, ceil_mode false).
class AvgPool2d final : public detail::Pool2d {
 public:
  AvgPool2d(std::string name, PoolOptions o) : Pool2d(std::move(name), o, false) {}
};

// (N, C, H, W) -> (N, C): the mean over each channel's plane, as
// torch.flatten(adaptive_avg_pool2d(x, 1), 1). The pooling writes a
// (N, C, 1, 1) channels-last view of the (N, C) output, which is the same bytes.
class GlobalAvgPool final : public detail::Pool2d {
 public:
  explicit GlobalAvgPool(std::string name) : Pool2d(std::move(name), false) {}
  std::string_view type() const override { return "global_avgpool"; }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    expect(in.size() == 1 && in[0].dims().size() == 4, "expects one (N, C, H, W) input");
    const auto x = in[0].dims();
    o_ = {.kernel_h = x[2], .kernel_w = x[3], .stride_h = x[2], .stride_w = x[3]};
    set_output(activation_desc({x[0], x[1]}));
    const auto view = activation_desc({x[0], x[1], 1, 1});
    y_view_ = dnnl::memory(view, engine(), static_cast<void*>(nullptr));
    dy_view_ = dnnl::memory(view, engine(), static_cast<void*>(nullptr));
    create(in[0], view, src(), y_view_, diff_src(), dy_view_, ctx);
  }

 protected:
  void on_bind() override {
    y_view_.set_data_handle(dst().get_data_handle());
    dy_view_.set_data_handle(diff_dst().get_data_handle());
  }

 private:
  dnnl::memory y_view_, dy_view_;
};

}  // namespace elastic
