// Slice: the part [begin, end) of its input along one axis (ShuffleNet's split
// of the channels in two), as x.narrow(axis, begin, end - begin). Forward copies
// that part out of the input (a reorder from a view at its offset); backward
// writes the output's gradient into the same part of the input's gradient and
// zeros elsewhere.
#pragma once

#include <cstring>

#include "elastic/graph/node.hpp"

namespace elastic {

class Slice final : public Node {
 public:
  Slice(std::string name, int axis, std::int64_t begin, std::int64_t end)
      : Node(std::move(name)), axis_(axis), begin_(begin), end_(end) {}
  std::string_view type() const override { return "slice"; }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    using namespace dnnl;
    expect(in.size() == 1, "expects one input");
    const Shape x = in[0].dims();
    expect(axis_ >= 0 && axis_ < int(x.size()), fmt::format("axis {} is outside rank {}", axis_, x.size()));
    expect(0 <= begin_ && begin_ < end_ && end_ <= x[std::size_t(axis_)],
           fmt::format("[{}, {}) is not a non-empty part of axis {} of {}", begin_, end_, axis_, to_string(x)));
    Shape y = x;
    y[std::size_t(axis_)] = end_ - begin_;
    set_output(activation_desc(y, in[0].data_type()));
    memory::dims offset(x.size(), 0);
    offset[std::size_t(axis_)] = begin_;
    const auto part = in[0].submemory_desc(y, offset);
    src_part_ = memory(part, ctx.engine(), static_cast<void*>(nullptr));
    diff_part_ = memory(part, ctx.engine(), static_cast<void*>(nullptr));
    fwd_ = reorder_call(src_part_, dst());
    bwd_ = reorder_call(diff_dst(), diff_part_);
    bytes_ = in[0].get_size();
  }

  void forward(const RunCtx& run) override { fwd_(run.stream); }
  void backward_data(const RunCtx& run) override {
    if (!has_diff_src()) return;
    std::memset(diff_src().get_data_handle(), 0, bytes_);
    bwd_(run.stream);
  }

 protected:
  void on_bind() override {
    src_part_.set_data_handle(src().get_data_handle());
    diff_part_.set_data_handle(diff_src().get_data_handle());
  }

 private:
  int axis_;
  std::int64_t begin_, end_;
  dnnl::memory src_part_, diff_part_;  // the part as views of the input and its gradient
  Call fwd_, bwd_;
  std::size_t bytes_ = 0;
};

}  // namespace elastic
