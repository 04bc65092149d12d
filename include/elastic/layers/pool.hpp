// Pooling on oneDNN's pooling primitives: MaxPool2d and AvgPool2d as torch
// defines them (floor output size; max pooling treats padding as -inf, average
// pooling counts it in the divisor), and GlobalAvgPool, (N, C, H, W) -> (N, C).
// None has params, so only forward and backward_data run.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "elastic/graph/node.hpp"

namespace elastic {

struct PoolOptions {
  std::int64_t kernel_h = 0, kernel_w = 0;    // required, as torch's kernel_size
  std::int64_t stride_h = 0, stride_w = 0;    // 0: the kernel size (torch's default)
  std::int64_t padding_h = 0, padding_w = 0;  // on both sides
};

namespace detail {

// A forward and a backward pooling primitive bound to the given memories. The
// forward is always forward_training: it is what makes max pooling record its
// argmax in `workspace`, and a backward after an inference-mode forward
// (which the graph allows) must still find a workspace that matches.
struct Pooling {
  Call forward, backward;
  dnnl::memory workspace;  // max pooling only: argmax per output, node-owned

  Pooling() = default;
  Pooling(dnnl::algorithm alg, const dnnl::memory::dims& kernel, const dnnl::memory::dims& strides,
          const dnnl::memory::dims& padding, const dnnl::memory& x, const dnnl::memory& y, const dnnl::memory& dx,
          const dnnl::memory& dy, const dnnl::engine& eng) {
    using namespace dnnl;
    const pooling_forward::primitive_desc fwd_pd(
        {prop_kind::forward_training, alg, x.get_desc(), y.get_desc(), strides, kernel, padding, padding},
        user_scratchpad(), eng);
    const pooling_backward::primitive_desc bwd_pd(
        {alg, dx.get_desc(), dy.get_desc(), strides, kernel, padding, padding}, user_scratchpad(), eng, fwd_pd);
    Args fwd_args{{DNNL_ARG_SRC, x}, {DNNL_ARG_DST, y}};
    Args bwd_args{{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_SRC, dx}};
    if (fwd_pd.workspace_desc().get_size() > 0) {
      workspace = memory(fwd_pd.workspace_desc(), eng);
      fwd_args[DNNL_ARG_WORKSPACE] = workspace;
      bwd_args[DNNL_ARG_WORKSPACE] = workspace;
    }
    forward = Call(pooling_forward(fwd_pd), fwd_args);
    backward = Call(pooling_backward(bwd_pd), bwd_args);
  }
};

// Windowed pooling over (N, C, H, W) channels-last values; `max` or average.
class WindowPool2d : public Node {
 public:
  WindowPool2d(std::string name, PoolOptions o, bool max) : Node(std::move(name)), o_(o), max_(max) {
    if (o_.stride_h == 0) o_.stride_h = o_.kernel_h;
    if (o_.stride_w == 0) o_.stride_w = o_.kernel_w;
    if (o_.kernel_h <= 0 || o_.kernel_w <= 0 || o_.stride_h <= 0 || o_.stride_w <= 0 || o_.padding_h < 0 ||
        o_.padding_w < 0)
      fail("layer '{}' ({}): kernel {}x{} and stride {}x{} must be positive and padding {}x{} non-negative",
           this->name(), type(), o_.kernel_h, o_.kernel_w, o_.stride_h, o_.stride_w, o_.padding_h, o_.padding_w);
    // torch's rule; it also guarantees that no window lies wholly in the
    // padding, where a max would be -inf.
    if (2 * o_.padding_h > o_.kernel_h || 2 * o_.padding_w > o_.kernel_w)
      fail("layer '{}' ({}): padding {}x{} must be at most half the {}x{} kernel, as in torch", this->name(), type(),
           o_.padding_h, o_.padding_w, o_.kernel_h, o_.kernel_w);
  }

  std::string_view type() const override { return max_ ? "maxpool2d" : "avgpool2d"; }
  const PoolOptions& options() const { return o_; }  // strides resolved

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    using dnnl::algorithm;
    expect(in.size() == 1 && in[0].dims().size() == 4,
           fmt::format("expects one (N, C, H, W) input, got {}", in.empty() ? "none" : to_string(in[0].dims())));
    const auto x = in[0].dims();  // (N, C, H, W)
    const std::int64_t padded_h = x[2] + 2 * o_.padding_h, padded_w = x[3] + 2 * o_.padding_w;
    expect(padded_h >= o_.kernel_h && padded_w >= o_.kernel_w,
           fmt::format("the {}x{} kernel is larger than the input {} with padding {}x{}", o_.kernel_h, o_.kernel_w,
                       to_string(x), o_.padding_h, o_.padding_w));
    // torch's floor((H + 2p - k) / s) + 1 (ceil_mode false).
    const Shape y{x[0], x[1], (padded_h - o_.kernel_h) / o_.stride_h + 1, (padded_w - o_.kernel_w) / o_.stride_w + 1};
    const auto dt = in[0].data_type();
    set_output(is_blocked_image(in[0]) ? blocked_activation_desc(y, dt)
                                       : activation_desc(y, dt));  // the input's layout
    // torch's count_include_pad=True divides every window by kh*kw: include_padding.
    const auto alg = max_ ? algorithm::pooling_max : algorithm::pooling_avg_include_padding;
    pool_ = Pooling(alg, {o_.kernel_h, o_.kernel_w}, {o_.stride_h, o_.stride_w}, {o_.padding_h, o_.padding_w}, src(),
                    dst(), diff_src(), diff_dst(), ctx.engine());
  }

  void forward(const RunCtx& run) override { pool_.forward(run.stream); }
  void backward_data(const RunCtx& run) override {
    if (has_diff_src()) pool_.backward(run.stream);
  }

  // Neither backward reads an activation: oneDNN's max-pooling backward takes
  // no src, only the argmax workspace (kept by this node, not by the planner),
  // and average pooling's gradient is diff_dst spread over each window.
  Reads data_reads() const override { return {.inputs = false, .output = false}; }

 private:
  PoolOptions o_;
  bool max_;
  Pooling pool_;
};

}  // namespace detail

// torch.nn.MaxPool2d (dilation 1, ceil_mode false).
class MaxPool2d final : public detail::WindowPool2d {
 public:
  MaxPool2d(std::string name, PoolOptions o) : WindowPool2d(std::move(name), o, true) {}
};

// torch.nn.AvgPool2d with its defaults (count_include_pad true, ceil_mode false).
class AvgPool2d final : public detail::WindowPool2d {
 public:
  AvgPool2d(std::string name, PoolOptions o) : WindowPool2d(std::move(name), o, false) {}
};

// (N, C, H, W) -> (N, C): each channel's mean, as torch.flatten(adaptive_avg_pool2d(x, 1), 1).
// One average pooling whose window is the whole plane writes a (N, C, 1, 1)
// view of the (N, C) output in the input's layout: the same bytes, so no copy.
class GlobalAvgPool final : public Node {
 public:
  explicit GlobalAvgPool(std::string name) : Node(std::move(name)) {}

  std::string_view type() const override { return "global_avgpool"; }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    expect(in.size() == 1 && in[0].dims().size() == 4,
           fmt::format("expects one (N, C, H, W) input, got {}", in.empty() ? "none" : to_string(in[0].dims())));
    const auto x = in[0].dims();  // (N, C, H, W)
    const auto dt = in[0].data_type();
    set_output(activation_desc({x[0], x[1]}, dt));
    // A blocked input gets a blocked view: with C a multiple of 16 and 1x1
    // planes it has the same bytes as the plain (N, C) output too.
    const auto view = is_blocked_image(in[0]) ? blocked_activation_desc({x[0], x[1], 1, 1}, dt)
                                              : activation_desc({x[0], x[1], 1, 1}, dt);
    y_view_ = dnnl::memory(view, engine(), static_cast<void*>(nullptr));
    dy_view_ = dnnl::memory(view, engine(), static_cast<void*>(nullptr));
    pool_ = detail::Pooling(dnnl::algorithm::pooling_avg_include_padding, {x[2], x[3]}, {x[2], x[3]}, {0, 0}, src(),
                            y_view_, diff_src(), dy_view_, ctx.engine());
  }

  void forward(const RunCtx& run) override { pool_.forward(run.stream); }
  void backward_data(const RunCtx& run) override {
    if (has_diff_src()) pool_.backward(run.stream);
  }

  // The gradient is diff_dst / (H*W) over each plane: no activation is read.
  Reads data_reads() const override { return {.inputs = false, .output = false}; }

 protected:
  void on_bind() override {
    y_view_.set_data_handle(dst().get_data_handle());
    dy_view_.set_data_handle(diff_dst().get_data_handle());
  }

 private:
  dnnl::memory y_view_, dy_view_;  // (N, C, 1, 1) views of dst() and diff_dst()
  detail::Pooling pool_;
};

}  // namespace elastic
