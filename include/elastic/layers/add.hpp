// Residual Add: out = a + b for two values of the same shape (the join of a
// ResNet block). Forward on oneDNN's binary primitive; the gradient of each
// input is the output gradient, copied by a reorder (a parallel copy).
#pragma once

#include "elastic/graph/node.hpp"

namespace elastic {

class Add final : public Node {
 public:
  explicit Add(std::string name) : Node(std::move(name)) {}
  std::string_view type() const override { return "add"; }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    expect(in.size() == 2, "expects two inputs");
    expect(in[0].dims() == in[1].dims(),
           fmt::format("input shapes differ: {} and {}", to_string(in[0].dims()), to_string(in[1].dims())));
    expect(in[0] == in[1], "inputs have different memory layouts");
    set_output(in[0]);
    fwd_ = Call(dnnl::binary({{dnnl::algorithm::binary_add, in[0], in[1], in[0]}, user_scratchpad(), ctx.engine()}),
                {{DNNL_ARG_SRC_0, src(0)}, {DNNL_ARG_SRC_1, src(1)}, {DNNL_ARG_DST, dst()}});
    for (int i = 0; i < 2; ++i) copy_[i] = reorder_call(diff_dst(), diff_src(i));
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
