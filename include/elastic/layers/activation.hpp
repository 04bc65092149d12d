// Elementwise activations: ReLU, ReLU6 (clamp to [0, 6], MobileNetV2), the
// exact erf GELU (torch.nn.GELU's default, ViT), sigmoid, SiLU (x * sigmoid(x)),
// hardswish and hardsigmoid (MobileNetV3), on oneDNN's eltwise primitives but
// GELU. Kinds that differentiate from their output (ReLU, ReLU6, sigmoid,
// hardsigmoid) do not keep their input for backward. oneDNN 2.6 has no
// hardsigmoid: it runs as clip(x / 6 + 1/2, 0, 1), a linear eltwise then a
// clip in place, and backward as the clip's backward then the same scaling.
// GELU runs on the host (host::gelu_at) where its loops run as AVX-512 code:
// where its backward runs, one pass writes gelu(x) and gelu'(x), the
// derivative kept in a saved buffer in place of x, and backward is one
// product, dy * gelu'(x). oneDNN's backward evaluated erf and exp again from
// x: 0.6-1.0 ms against 0.1-0.4 for the product on a ViT-B/16 MLP at batch 4
// (2.4M values; benchmarks/RESULTS.md). Elsewhere (the build's SSE2 copy of
// those loops does not vectorize) GELU stays on oneDNN's JIT kernels.
#pragma once

#include "elastic/core/host_math.hpp"
#include "elastic/graph/node.hpp"

namespace elastic {

enum class Activation { relu, relu6, gelu, sigmoid, silu, hardswish, hardsigmoid };

// Everything that differs between the kinds, in one exhaustive switch (no
// default: -Werror=switch makes a kind added to the enum but not here a
// compile error; a value outside the enum is refused).
struct ActivationSpec {
  std::string_view name;
  dnnl::algorithm algorithm;
  float alpha = 0, beta = 0;
  bool uses_dst = false;  // backward from the output (the input need not be kept)
  // The algorithm applies to scale * x + shift (only with uses_dst: backward
  // then needs no input).
  float scale = 1, shift = 0;
};

inline ActivationSpec activation_spec(Activation kind) {
  switch (kind) {
    case Activation::relu:
      return {"relu", dnnl::algorithm::eltwise_relu_use_dst_for_bwd, 0, 0, true};
    case Activation::relu6:
      return {"relu6", dnnl::algorithm::eltwise_clip_v2_use_dst_for_bwd, 0, 6, true};
    case Activation::gelu:
      return {"gelu", dnnl::algorithm::eltwise_gelu_erf, 0, 0, false};
    case Activation::sigmoid:
      return {"sigmoid", dnnl::algorithm::eltwise_logistic_use_dst_for_bwd, 0, 0, true};
    case Activation::silu:
      return {"silu", dnnl::algorithm::eltwise_swish, 1, 0, false};
    case Activation::hardswish:
      return {"hardswish", dnnl::algorithm::eltwise_hardswish, 0, 0, false};
    case Activation::hardsigmoid:
      return {"hardsigmoid", dnnl::algorithm::eltwise_clip_v2_use_dst_for_bwd, 0, 1, true, 1.0f / 6, 0.5f};
  }
  fail("activation kind {} is not one of relu, relu6, gelu, sigmoid, silu, hardswish, hardsigmoid",
       static_cast<int>(kind));
}

class Eltwise final : public Node {
 public:
  // `host_gelu`: GELU on the host (the default where vectorized() runs AVX-512
  // code) or on oneDNN's eltwise kernels; other kinds ignore it.
  Eltwise(std::string name, Activation kind, bool host_gelu = host::runs_avx512())
      : Node(std::move(name)),
        kind_(kind),
        spec_(activation_spec(kind)),
        host_(kind == Activation::gelu && host_gelu) {}

  std::string_view type() const override { return spec_.name; }
  Activation kind() const { return kind_; }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    using namespace dnnl;
    expect(in.size() == 1, "expects one input");
    set_output(in[0]);
    threads_ = ctx.threads();
    size_ = static_cast<std::int64_t>(in[0].get_size() / memory::data_type_size(in[0].data_type()));
    fwd_ = bwd_ = scale_in_ = scale_grad_ = {};
    if (host_) return;
    const auto [name, alg, alpha, beta, uses_dst, scale, shift] = spec_;
    const auto& eng = ctx.engine();
    const bool linear = scale != 1 || shift != 0;
    expect(!linear || uses_dst, "a scaled input needs an activation that differentiates from its output");
    eltwise_forward::primitive_desc fwd({prop_kind::forward_training, alg, in[0], alpha, beta}, user_scratchpad(), eng);
    eltwise_backward::primitive_desc bwd({alg, in[0], in[0], alpha, beta}, user_scratchpad(), eng, fwd);
    // With a scaled input the activation runs in place on the scaled values.
    fwd_ = Call(eltwise_forward(fwd), {{DNNL_ARG_SRC, linear ? dst() : src()}, {DNNL_ARG_DST, dst()}});
    bwd_ = Call(eltwise_backward(bwd), {{uses_dst ? DNNL_ARG_DST : DNNL_ARG_SRC, uses_dst ? dst() : src()},
                                        {DNNL_ARG_DIFF_DST, diff_dst()},
                                        {DNNL_ARG_DIFF_SRC, diff_src()}});
    if (linear) {
      const auto linear_call = [&](float a, float b, const memory& from, const memory& to) {
        eltwise_forward::primitive_desc pd({prop_kind::forward_inference, algorithm::eltwise_linear, in[0], a, b},
                                           user_scratchpad(), eng);
        return Call(eltwise_forward(pd), {{DNNL_ARG_SRC, from}, {DNNL_ARG_DST, to}});
      };
      scale_in_ = linear_call(scale, shift, src(), dst());
      scale_grad_ = linear_call(scale, 0, diff_src(), diff_src());
    }
  }

  void forward(const RunCtx& run) override {
    if (host_) {
      run.stream.wait();
      gelu_forward();
      return;
    }
    if (scale_in_) scale_in_(run.stream);
    fwd_(run.stream);
  }
  void backward_data(const RunCtx& run) override {
    if (!has_diff_src()) return;
    if (host_) {
      expect(saved() != nullptr, "backward without the derivative its forward keeps (no saved buffer bound)");
      run.stream.wait();
      gelu_backward();
      return;
    }
    bwd_(run.stream);
    if (scale_grad_) scale_grad_(run.stream);
  }
  Reads data_reads() const override {
    if (host_) return {};
    return spec_.uses_dst ? Reads{.output = true} : Reads{.inputs = true};
  }
  std::size_t saved_bytes() const override { return host_ ? static_cast<std::size_t>(dst().get_desc().get_size()) : 0; }

 private:
  // y = gelu(x), and gelu'(x) into the saved buffer where backward runs (under a
  // training plan, in evaluation too: a backward may follow any forward); the values
  // are the same either way.
  void gelu_forward() {
    with_element(dst().get_desc().data_type(), [&]<class T>(std::type_identity<T>) {
      const T* __restrict x = ptr_as<T>(src());
      T* __restrict y = ptr_as<T>(dst());
      T* __restrict slope = reinterpret_cast<T*>(saved());
      host::parallel_rows(size_, threads_, [&](std::int64_t begin, std::int64_t end, int) ELASTIC_INLINE {
        if (slope) {
#pragma omp simd
          for (std::int64_t i = begin; i < end; ++i) {
            const host::GeluAt g = host::gelu_at(host::to_float(x[i]));
            y[i] = host::from_float<T>(g.value);
            slope[i] = host::from_float<T>(g.slope);
          }
        } else {
#pragma omp simd
          for (std::int64_t i = begin; i < end; ++i)
            y[i] = host::from_float<T>(host::gelu_at(host::to_float(x[i])).value);
        }
      });
    });
  }
  // dx = dy * gelu'(x), multiplied in fp32 and rounded to the activation type (in bf16
  // the kept derivative is itself a bf16 value: two roundings, about 2^-9 each).
  void gelu_backward() {
    with_element(dst().get_desc().data_type(), [&]<class T>(std::type_identity<T>) {
      const T* __restrict dy = ptr_as<T>(diff_dst());
      const T* __restrict slope = reinterpret_cast<const T*>(saved());
      T* __restrict dx = ptr_as<T>(diff_src());
      host::parallel_rows(size_, threads_, [&](std::int64_t begin, std::int64_t end, int) ELASTIC_INLINE {
#pragma omp simd
        for (std::int64_t i = begin; i < end; ++i)
          dx[i] = host::from_float<T>(host::to_float(dy[i]) * host::to_float(slope[i]));
      });
    });
  }

  Activation kind_;
  ActivationSpec spec_;
  bool host_ = false;  // GELU on the host
  Call fwd_, bwd_;
  Call scale_in_, scale_grad_;  // scale * x + shift before, its scale on the gradient after
  int threads_ = 1;
  std::int64_t size_ = 0;  // elements
};

}  // namespace elastic
