// Mul: out = a * b elementwise, b either of a's shape or (N, C, 1, 1) against an
// image a (N, C, H, W) (squeeze-and-excitation's channel gate), then broadcast
// over height and width. Forward on oneDNN's binary primitive. Backward:
// da = dy * b (the same binary, b broadcast), db = dy * a, for a broadcast b
// summed over height and width (a binary into a transient, then sum_call).
#pragma once

#include "elastic/graph/node.hpp"

namespace elastic {

class Mul final : public Node {
 public:
  explicit Mul(std::string name) : Node(std::move(name)) {}
  std::string_view type() const override { return "mul"; }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    using namespace dnnl;
    expect(in.size() == 2, "expects two inputs");
    const auto a = in[0].dims(), b = in[1].dims();
    expect(in[0].data_type() == in[1].data_type(), "inputs have different data types");
    broadcast_ = a != b;
    expect(!broadcast_ || (a.size() == 4 && b.size() == 4 && b[0] == a[0] && b[1] == a[1] && b[2] == 1 && b[3] == 1),
           fmt::format("multiplies shapes {} and {}: the second must equal the first or be (N, C, 1, 1)", to_string(a),
                       to_string(b)));
    set_output(in[0]);
    const auto& eng = ctx.engine();
    const auto mul = [&](const memory::desc& x, const memory::desc& y, const memory::desc& z) {
      return binary({{algorithm::binary_mul, x, y, z}, user_scratchpad(), eng});
    };
    fwd_ = Call(mul(in[0], in[1], in[0]), {{DNNL_ARG_SRC_0, src(0)}, {DNNL_ARG_SRC_1, src(1)}, {DNNL_ARG_DST, dst()}});
    da_ = Call(mul(in[0], in[1], in[0]),
               {{DNNL_ARG_SRC_0, diff_dst()}, {DNNL_ARG_SRC_1, src(1)}, {DNNL_ARG_DST, diff_src(0)}});
    if (!broadcast_) {
      db_ = Call(mul(in[0], in[0], in[1]),
                 {{DNNL_ARG_SRC_0, diff_dst()}, {DNNL_ARG_SRC_1, src(0)}, {DNNL_ARG_DST, diff_src(1)}});
      db_sum_ = {};
      return;
    }
    const memory prod = transient(in[0]);
    db_ =
        Call(mul(in[0], in[0], in[0]), {{DNNL_ARG_SRC_0, diff_dst()}, {DNNL_ARG_SRC_1, src(0)}, {DNNL_ARG_DST, prod}});
    db_sum_ = sum_call(prod, diff_src(1));
  }

  void forward(const RunCtx& run) override { fwd_(run.stream); }

  void backward_data(const RunCtx& run) override {
    if (has_diff_src(0)) da_(run.stream);
    if (has_diff_src(1)) {
      db_(run.stream);
      if (db_sum_) db_sum_(run.stream);
    }
  }

  Reads data_reads() const override { return {.inputs = true}; }

 private:
  bool broadcast_ = false;
  Call fwd_, da_, db_, db_sum_;
};

// ChannelScale: an image (N, C, H, W) times a trained per-channel param of
// shape (C, 1, 1) under its own full name (ConvNeXt's layer_scale). Forward and
// backward_data on oneDNN's binary primitive; the param's gradient is dy * x
// summed over the batch, height and width (a binary into a transient, then
// sum_call into the fp32 gradient).
class ChannelScale final : public Node {
 public:
  ChannelScale(std::string name, std::string param_name, std::int64_t channels)
      : Node(std::move(name)), param_name_(std::move(param_name)), channels_(channels) {}
  std::string_view type() const override { return "channel_scale"; }

  void declare(ParamStore& store) override {
    scale_ = add_param_named(store, param_name_, {channels_, 1, 1}, ParamRole::norm_scale, Init::one());
  }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore& store) override {
    using namespace dnnl;
    expect(in.size() == 1 && in[0].dims().size() == 4 && in[0].dims()[1] == channels_,
           fmt::format("expects one (N, {}, H, W) input", channels_));
    set_output(in[0]);
    const auto& eng = ctx.engine();
    const auto dt = in[0].data_type();
    const memory::desc p32({1, channels_, 1, 1}, memory::data_type::f32, memory::format_tag::nhwc);
    const memory::desc p_any({1, channels_, 1, 1}, dt, memory::format_tag::nhwc);
    scale_md_ = memory(p32, eng, store[scale_].value);
    // The scale as the kernels read it: the fp32 param, or a bf16 copy.
    memory scale = scale_md_;
    if (dt != memory::data_type::f32) {
      scale = transient(p_any, kWeightCopySlot);
      to_kernel_ = reorder_call(scale_md_, scale);
    }
    const binary scaled({{algorithm::binary_mul, in[0], p_any, in[0]}, user_scratchpad(), eng});
    fwd_ = Call(scaled, {{DNNL_ARG_SRC_0, src()}, {DNNL_ARG_SRC_1, scale}, {DNNL_ARG_DST, dst()}});
    bwd_ = Call(scaled, {{DNNL_ARG_SRC_0, diff_dst()}, {DNNL_ARG_SRC_1, scale}, {DNNL_ARG_DST, diff_src()}});
    const memory prod = transient(in[0]);
    prod_ = Call(binary({{algorithm::binary_mul, in[0], in[0], in[0]}, user_scratchpad(), eng}),
                 {{DNNL_ARG_SRC_0, diff_dst()}, {DNNL_ARG_SRC_1, src()}, {DNNL_ARG_DST, prod}});
    sum_ = sum_call(prod, grad_memory(scale_, p32));
  }

  void forward(const RunCtx& run) override {
    if (to_kernel_) to_kernel_(run.stream);
    fwd_(run.stream);
  }
  void backward_data(const RunCtx& run) override {
    if (!has_diff_src()) return;
    if (to_kernel_) to_kernel_(run.stream);
    bwd_(run.stream);
  }
  void backward_weights(const RunCtx& run) override {
    prod_(run.stream);
    sum_(run.stream);
  }
  Reads weights_reads() const override { return {.inputs = true}; }

 private:
  std::string param_name_;
  std::int64_t channels_;
  int scale_ = -1;
  dnnl::memory scale_md_;  // the param
  Call to_kernel_, fwd_, bwd_, prod_, sum_;
};

}  // namespace elastic
