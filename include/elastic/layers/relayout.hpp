// Relayout: the identity on values, moving an image between channels-last and
// the blocked layout (blocked_activation_desc), so that a stretch of layers can
// run on the layout their kernels are fastest on. Forward is a reorder, and
// backward_data the reverse reorder of the gradient.
#pragma once

#include "elastic/graph/node.hpp"

namespace elastic {

class Relayout final : public Node {
 public:
  // blocked: to the blocked layout; otherwise to channels-last.
  Relayout(std::string name, bool blocked) : Node(std::move(name)), blocked_(blocked) {}
  std::string_view type() const override { return "relayout"; }

  void setup(std::span<const dnnl::memory::desc> in, Context&, ParamStore&) override {
    expect(in.size() == 1 && in[0].dims().size() == 4, "expects one (N, C, H, W) input");
    const auto x = in[0].dims();
    const auto dt = in[0].data_type();
    set_output(blocked_ ? blocked_activation_desc(x, dt) : activation_desc(x, dt));
    fwd_ = reorder_call(src(), dst());
    bwd_ = reorder_call(diff_dst(), diff_src());
  }

  void forward(const RunCtx& run) override { fwd_(run.stream); }
  void backward_data(const RunCtx& run) override {
    if (has_diff_src()) bwd_(run.stream);
  }

 private:
  bool blocked_;
  Call fwd_, bwd_;
};

}  // namespace elastic
