// Flatten as torch.flatten(x, 1): (N, C, H, W) -> (N, C*H*W) in torch's (c, h, w)
// order. Images are channels-last in the graph, so forward is a reorder into an
// NCHW view of the output, and backward the reverse; lower ranks are copies.
#pragma once

#include "elastic/graph/node.hpp"

namespace elastic {

class Flatten final : public Node {
 public:
  explicit Flatten(std::string name) : Node(std::move(name)) {}
  std::string_view type() const override { return "flatten"; }

  void setup(std::span<const dnnl::memory::desc> in, Context&, ParamStore&) override {
    using namespace dnnl;
    expect(in.size() == 1 && in[0].dims().size() >= 2, "expects an input of rank 2 or more");
    const auto x = in[0].dims();
    const auto dt = in[0].data_type();
    set_output(activation_desc({x[0], numel(x) / x[0]}, dt));
    // The output bytes seen with the input's logical dims in row-major (NCHW) order.
    const memory::desc view = plain_desc(x, dt);
    y_view_ = memory(view, engine(), static_cast<void*>(nullptr));
    dy_view_ = memory(view, engine(), static_cast<void*>(nullptr));
    fwd_ = reorder_call(src(), y_view_);
    bwd_ = reorder_call(dy_view_, diff_src());
  }

  void forward(const RunCtx& run) override { fwd_(run.stream); }
  void backward_data(const RunCtx& run) override {
    if (has_diff_src()) bwd_(run.stream);
  }

 protected:
  void on_bind() override {
    y_view_.set_data_handle(dst().get_data_handle());
    dy_view_.set_data_handle(diff_dst().get_data_handle());
  }

 private:
  dnnl::memory y_view_, dy_view_;
  Call fwd_, bwd_;
};

}  // namespace elastic
