// ChannelShuffle: ShuffleNet's channel shuffle, as torch's reshape (N, g, C/g,
// H, W) -> transpose(1, 2) -> reshape (N, C, H, W): output channel k*g + i is
// input channel i*(C/g) + k. On oneDNN's shuffle primitive, whose group size
// is C/g in this notation; backward is its inverse.
#pragma once

#include "elastic/graph/node.hpp"

namespace elastic {

class ChannelShuffle final : public Node {
 public:
  ChannelShuffle(std::string name, std::int64_t groups) : Node(std::move(name)), groups_(groups) {
    if (groups < 1) fail("layer '{}' (channel_shuffle): groups must be positive, got {}", this->name(), groups);
  }
  std::string_view type() const override { return "channel_shuffle"; }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    using namespace dnnl;
    expect(in.size() == 1 && in[0].dims().size() == 4, "expects one (N, C, H, W) input");
    const auto channels = in[0].dims()[1];
    expect(channels % groups_ == 0, fmt::format("{} channels are not a multiple of {} groups", channels, groups_));
    set_output(in[0]);
    const int group_size = static_cast<int>(channels / groups_);
    const auto& eng = ctx.engine();
    // (Shuffle's descriptors take the engine before the attributes.)
    const shuffle_forward::primitive_desc fwd({prop_kind::forward_training, in[0], 1, group_size}, eng,
                                              user_scratchpad());
    const shuffle_backward::primitive_desc bwd({in[0], 1, group_size}, eng, fwd, user_scratchpad());
    fwd_ = Call(shuffle_forward(fwd), {{DNNL_ARG_SRC, src()}, {DNNL_ARG_DST, dst()}});
    bwd_ = Call(shuffle_backward(bwd), {{DNNL_ARG_DIFF_DST, diff_dst()}, {DNNL_ARG_DIFF_SRC, diff_src()}});
  }

  void forward(const RunCtx& run) override { fwd_(run.stream); }
  void backward_data(const RunCtx& run) override {
    if (has_diff_src()) bwd_(run.stream);
  }

 private:
  std::int64_t groups_;
  Call fwd_, bwd_;
};

}  // namespace elastic
