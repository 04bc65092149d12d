// Concat: its inputs joined along one axis (channels of images: DenseNet's
// dense blocks), as torch.cat. Forward on oneDNN's concat primitive; backward
// copies each input's part of the output gradient out of it (a reorder from a
// view at that part's offset).
#pragma once

#include <vector>

#include "elastic/graph/node.hpp"

namespace elastic {

class Concat final : public Node {
 public:
  Concat(std::string name, int axis = 1) : Node(std::move(name)), axis_(axis) {}
  std::string_view type() const override { return "concat"; }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    using namespace dnnl;
    expect(!in.empty(), "expects at least one input");
    Shape y = in[0].dims();
    expect(axis_ >= 0 && axis_ < int(y.size()), fmt::format("axis {} is outside rank {}", axis_, y.size()));
    const auto dt = in[0].data_type();
    std::vector<std::int64_t> offsets;
    y[std::size_t(axis_)] = 0;
    for (const auto& md : in) {
      Shape x = md.dims();
      expect(x.size() == y.size() && md.data_type() == dt, "inputs differ in rank or data type");
      for (std::size_t d = 0; d < x.size(); ++d)
        expect(int(d) == axis_ || x[d] == y[d], fmt::format("input shapes {} and {} differ outside axis {}",
                                                            to_string(in[0].dims()), to_string(x), axis_));
      offsets.push_back(y[std::size_t(axis_)]);
      y[std::size_t(axis_)] += x[std::size_t(axis_)];
    }
    set_output(activation_desc(y, dt));
    const auto& eng = ctx.engine();
    std::vector<memory::desc> srcs(in.begin(), in.end());
    Args args{{DNNL_ARG_DST, dst()}};
    for (std::size_t i = 0; i < in.size(); ++i) args[DNNL_ARG_MULTIPLE_SRC + int(i)] = src(i);
    fwd_ = Call(concat(concat::primitive_desc(output_desc(), axis_, srcs, eng, user_scratchpad())), args);
    views_.clear();
    bwd_.clear();
    for (std::size_t i = 0; i < in.size(); ++i) {
      memory::dims offset(y.size(), 0);
      offset[std::size_t(axis_)] = offsets[i];
      views_.emplace_back(output_desc().submemory_desc(in[i].dims(), offset), eng, static_cast<void*>(nullptr));
      bwd_.push_back(reorder_call(views_.back(), diff_src(i)));
    }
  }

  void forward(const RunCtx& run) override { fwd_(run.stream); }
  void backward_data(const RunCtx& run) override {
    for (std::size_t i = 0; i < bwd_.size(); ++i)
      if (has_diff_src(i)) bwd_[i](run.stream);
  }

 protected:
  void on_bind() override {
    for (auto& v : views_) v.set_data_handle(diff_dst().get_data_handle());
  }

 private:
  int axis_;
  Call fwd_;
  std::vector<dnnl::memory> views_;  // each input's part of the output gradient
  std::vector<Call> bwd_;
};

}  // namespace elastic
