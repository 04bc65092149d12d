// Add: out = a + b, for two values of the same shape (the join of a ResNet
// block), or an image a (N, C, H, W) and a (N, C, 1, 1) b broadcast over height
// and width. Forward on oneDNN's binary primitive; a's gradient is the output
// gradient, copied by a reorder (a parallel copy), and b's that copy too, or,
// broadcast, its sum over height and width.
#pragma once

#include "elastic/graph/node.hpp"

namespace elastic {

class Add final : public Node {
 public:
  explicit Add(std::string name) : Node(std::move(name)) {}
  std::string_view type() const override { return "add"; }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    expect(in.size() == 2, "expects two inputs");
    const auto a = in[0].dims(), b = in[1].dims();
    const bool broadcast =
        a != b && a.size() == 4 && b.size() == 4 && b[0] == a[0] && b[1] == a[1] && b[2] == 1 && b[3] == 1;
    expect(a == b || broadcast, fmt::format("input shapes differ: {} and {} (the second must equal the first or be "
                                            "(N, C, 1, 1))",
                                            to_string(a), to_string(b)));
    expect(broadcast || in[0] == in[1], "inputs have different memory layouts");
    set_output(in[0]);
    fwd_ = Call(dnnl::binary({{dnnl::algorithm::binary_add, in[0], in[1], in[0]}, user_scratchpad(), ctx.engine()}),
                {{DNNL_ARG_SRC_0, src(0)}, {DNNL_ARG_SRC_1, src(1)}, {DNNL_ARG_DST, dst()}});
    copy_[0] = reorder_call(diff_dst(), diff_src(0));
    copy_[1] = broadcast ? sum_call(diff_dst(), diff_src(1)) : reorder_call(diff_dst(), diff_src(1));
  }

  void forward(const RunCtx& run) override { fwd_(run.stream); }

  void backward_data(const RunCtx& run) override {
    for (int i = 0; i < 2; ++i)
      if (has_diff_src(i)) copy_[i](run.stream);
  }

 private:
  Call fwd_, copy_[2];
};

}  // namespace elastic
