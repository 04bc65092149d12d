// Mul: out = a * b elementwise, b either of a's shape or (N, C, 1, 1) against an
// image a (N, C, H, W) (squeeze-and-excitation's channel gate), then broadcast
// over height and width. Forward on oneDNN's binary primitive. Backward:
// da = dy * b (the same binary, b broadcast), db = dy * a, for a broadcast b
// summed over height and width (a binary into a transient, then a reduction).
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
    const reduction::primitive_desc sum(reduction::desc(algorithm::reduction_sum, in[0], in[1], 0.0f, 0.0f),
                                        user_scratchpad(), eng);
    db_sum_ = Call(reduction(sum), {{DNNL_ARG_SRC, prod}, {DNNL_ARG_DST, diff_src(1)}});
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

}  // namespace elastic
