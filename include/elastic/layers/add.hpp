// Add: out = a + b, for two values of the same shape (the join of a ResNet
// block), or an image a (N, C, H, W) and a (N, C, 1, 1) b broadcast over height
// and width; optionally followed in the same pass by a ReLU or ReLU6 (the
// node's output is then the activation's: ResNet's block ends in one).
// Forward on oneDNN's binary primitive (the activation as its post-op: one
// sweep). Without an activation a's gradient is the output gradient, copied
// by a reorder (a parallel copy), and b's that copy too, or, broadcast, its sum
// over height and width. With one, a host sweep reads the output and its
// gradient and writes mask * dy into a's gradient and, same-shape, b's
// (oneDNN takes a sweep for the activation's backward and one per copy);
// broadcast, b's is the sum of a's.
#pragma once

#include <limits>
#include <optional>

#include "elastic/graph/node.hpp"
#include "elastic/layers/activation.hpp"

namespace elastic {

class Add final : public Node {
 public:
  explicit Add(std::string name, std::optional<Activation> activation = std::nullopt) : Node(std::move(name)) {
    if (activation) fuse_activation(*activation);
  }
  std::string_view type() const override { return "add"; }

  // Whether `kind` can be applied inside the node (fuse_activation).
  static bool fuses(Activation kind) { return kind == Activation::relu || kind == Activation::relu6; }

  // Applies `kind` (relu or relu6) to the sum from now on; before the graph is finalized
  // (the ONNX importer fuses an activation that reads nothing else).
  void fuse_activation(Activation kind) {
    if (!fuses(kind))
      fail("layer '{}' (add): only relu and relu6 fuse into add, not {}", name(), activation_spec(kind).name);
    activation_ = kind;
    hi_ = kind == Activation::relu6 ? 6.0f : std::numeric_limits<float>::infinity();
  }
  std::optional<Activation> activation() const { return activation_; }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    using namespace dnnl;
    expect(in.size() == 2, "expects two inputs");
    const auto a = in[0].dims(), b = in[1].dims();
    broadcast_ = a != b && a.size() == 4 && b.size() == 4 && b[0] == a[0] && b[1] == a[1] && b[2] == 1 && b[3] == 1;
    expect(a == b || broadcast_, fmt::format("input shapes differ: {} and {} (the second must equal the first or be "
                                             "(N, C, 1, 1))",
                                             to_string(a), to_string(b)));
    expect(broadcast_ || in[0] == in[1], "inputs have different memory layouts");
    set_output(in[0]);
    threads_ = ctx.threads();
    size_ = static_cast<std::int64_t>(in[0].get_size() / memory::data_type_size(in[0].data_type()));
    primitive_attr attr = user_scratchpad();
    if (activation_) {
      post_ops ops;
      if (*activation_ == Activation::relu)
        ops.append_eltwise(1.0f, algorithm::eltwise_relu, 0.0f, 0.0f);
      else
        ops.append_eltwise(1.0f, algorithm::eltwise_clip_v2, 0.0f, hi_);
      attr.set_post_ops(ops);
    }
    fwd_ = Call(binary({{algorithm::binary_add, in[0], in[1], in[0]}, attr, ctx.engine()}),
                {{DNNL_ARG_SRC_0, src(0)}, {DNNL_ARG_SRC_1, src(1)}, {DNNL_ARG_DST, dst()}});
    copy_[0] = copy_[1] = {};
    if (!activation_) {
      copy_[0] = reorder_call(diff_dst(), diff_src(0));
      copy_[1] = broadcast_ ? sum_call(diff_dst(), diff_src(1)) : reorder_call(diff_dst(), diff_src(1));
      return;
    }
    // Broadcast, b's gradient is the sum of the masked gradient: a's, or a transient's
    // when a's is not wanted.
    if (broadcast_) {
      copy_[0] = sum_call(diff_src(0), diff_src(1));
      masked_ = transient(in[0]);
      copy_[1] = sum_call(masked_, diff_src(1));
    }
  }

  void forward(const RunCtx& run) override { fwd_(run.stream); }

  void backward_data(const RunCtx& run) override {
    if (!activation_) {
      for (int i = 0; i < 2; ++i)
        if (has_diff_src(i)) copy_[i](run.stream);
      return;
    }
    run.stream.wait();
    if (!broadcast_) {
      masked_backward(has_diff_src(0) ? diff_src(0) : dnnl::memory(), has_diff_src(1) ? diff_src(1) : dnnl::memory());
      return;
    }
    if (has_diff_src(0)) {
      masked_backward(diff_src(0), {});
      if (has_diff_src(1)) copy_[0](run.stream);
    } else if (has_diff_src(1)) {
      masked_backward(masked_, {});
      copy_[1](run.stream);
    }
  }

  Reads data_reads() const override { return {.output = activation_.has_value()}; }

 private:
  // a = b = dy where the output is strictly inside (0, hi_), else 0 (the activation's
  // gradient from its output, as oneDNN's use_dst kinds take it); an empty target is skipped.
  void masked_backward(const dnnl::memory& a, const dnnl::memory& b) {
    const float hi = hi_;
    with_element(dst().get_desc().data_type(), [&]<class T>(std::type_identity<T>) {
      const T* __restrict y = ptr_as<T>(dst());
      const T* __restrict dy = ptr_as<T>(diff_dst());
      T* __restrict da = a ? ptr_as<T>(a) : nullptr;
      T* __restrict db = b ? ptr_as<T>(b) : nullptr;
      const auto sweep = [&](auto write) {
        host::parallel_rows(size_, threads_, [&](std::int64_t begin, std::int64_t end, int) ELASTIC_INLINE {
#pragma omp simd
          for (std::int64_t i = begin; i < end; ++i) {
            // Both loaded unconditionally and '&' for '&&': no branch, so the loop vectorizes.
            const float v = host::to_float(y[i]), g = host::to_float(dy[i]);
            write(i, host::from_float<T>(((v > 0.0f) & (v < hi)) ? g : 0.0f));
          }
        });
      };
      if (da && db)
        sweep([=](std::int64_t i, T g) ELASTIC_INLINE {
          da[i] = g;  // (not da[i] = db[i] = g: bf16's assignment would read db[i] back)
          db[i] = g;
        });
      else if (da)
        sweep([=](std::int64_t i, T g) ELASTIC_INLINE { da[i] = g; });
      else if (db)
        sweep([=](std::int64_t i, T g) ELASTIC_INLINE { db[i] = g; });
    });
  }

  std::optional<Activation> activation_;
  float hi_ = std::numeric_limits<float>::infinity();  // the activation's upper clamp
  bool broadcast_ = false;
  int threads_ = 1;
  std::int64_t size_ = 0;  // elements of the output
  dnnl::memory masked_;    // broadcast with an activation, a's gradient unwanted: b's sum reads it
  // Copies of the gradient into a's and b's (without an activation); with one and
  // broadcast, b's sum from a's gradient and from masked_.
  Call fwd_, copy_[2];
};

}  // namespace elastic
