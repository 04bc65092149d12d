// The core of torch.nn.MultiheadAttention (batch_first, self-attention, no mask,
// no dropout) between its in_proj and out_proj: from the packed projection
// (N, T, 3E) = [q | k | v] to (N, T, E), head h using columns h*d..(h+1)*d of
// each part (d = E / heads):  O_h = softmax(Q_h K_h^T / sqrt(d)) V_h.
// Every product is one oneDNN matmul over the (N, heads) batch whose operands
// are strided views into the packed buffers, so no head is ever copied out;
// the probabilities P (N, heads, T, T) are kept for backward; the gradients of
// P and of the scores are transients shared with every other node. Every
// operand has the input's type: in bf16 the products accumulate in fp32 and
// the softmax computes in fp32, storing bf16.
#pragma once

#include <cmath>
#include <vector>

#include "elastic/graph/node.hpp"

namespace elastic {

class ScaledDotProductAttention final : public Node {
 public:
  ScaledDotProductAttention(std::string name, std::int64_t num_heads) : Node(std::move(name)), heads_(num_heads) {
    if (num_heads <= 0) fail("layer '{}' (attention): num_heads must be positive", this->name());
  }

  std::string_view type() const override { return "attention"; }
  std::size_t own_bytes() const override { return static_cast<std::size_t>(n_ * heads_ * t_ * t_ * size_); }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    using namespace dnnl;
    expect(in.size() == 1 && in[0].dims().size() == 3, "expects the packed projection (N, T, 3E)");
    const auto x = in[0].dims();
    expect(x[2] % 3 == 0, fmt::format("last dim {} is not 3E", x[2]));
    n_ = x[0];
    t_ = x[1];
    e_ = x[2] / 3;
    expect(e_ % heads_ == 0, fmt::format("embed dim {} is not divisible by {} heads", e_, heads_));
    d_ = e_ / heads_;
    const auto dt = in[0].data_type();  // the element type of every operand here
    size_ = static_cast<std::int64_t>(memory::data_type_size(dt));
    set_output(activation_desc({n_, t_, e_}, dt));
    const auto& eng = ctx.engine();
    const std::int64_t H = heads_, T = t_, D = d_, E3 = 3 * e_;
    // (N, H, rows, cols) views: a head block of the packed input, its transpose, the output.
    const memory::desc head({n_, H, T, D}, dt, memory::dims{T * E3, D, E3, 1});
    const memory::desc head_t({n_, H, D, T}, dt, memory::dims{T * E3, D, 1, E3});
    const memory::desc out({n_, H, T, D}, dt, memory::dims{T * e_, D, e_, 1});
    const memory::desc probs({n_, H, T, T}, dt, memory::format_tag::abcd);
    const memory::desc probs_t({n_, H, T, T}, dt, memory::dims{H * T * T, T * T, 1, T});

    p_ = lazy_floats(n_ * H * T * T * size_ / 4 + 1);
    // The two gradients live only within backward_data: transients of two slots.
    const memory P(probs, eng, p_.get()), Pt(probs_t, eng, p_.get()), dP = transient(probs, 0);
    const memory dS = ds_ = transient(probs, 1), dSt = ds_t_ = memory(probs_t, eng, static_cast<void*>(nullptr));
    const auto view = [&](const memory::desc& md) { return memory(md, eng, static_cast<void*>(nullptr)); };
    q_ = view(head), kt_ = view(head_t), v_ = view(head), k_ = view(head), vt_ = view(head_t);
    o_ = view(out), do_ = view(out);
    dq_ = view(head), dk_ = view(head), dv_ = view(head);

    primitive_attr scaled = user_scratchpad();
    scaled.set_output_scales(0, {1.0f / std::sqrt(static_cast<float>(d_))});
    const auto mm = [&](const memory& a, const memory& b, const memory& c, const primitive_attr& attr) {
      matmul::primitive_desc pd({a.get_desc(), b.get_desc(), c.get_desc()}, attr, eng);
      return Call(matmul(pd), {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    };
    const primitive_attr plain = user_scratchpad();
    scores_ = mm(q_, kt_, P, scaled);  // S = Q K^T / sqrt(d), into P, softmaxed in place
    softmax_forward::primitive_desc sm({prop_kind::forward_training, probs, 3}, user_scratchpad(), eng);
    softmax_ = Call(softmax_forward(sm), {{DNNL_ARG_SRC, P}, {DNNL_ARG_DST, P}});
    context_ = mm(P, v_, o_, plain);    // O = P V
    grad_v_ = mm(Pt, do_, dv_, plain);  // dV = P^T dO
    grad_p_ = mm(do_, vt_, dP, plain);  // dP = dO V^T
    softmax_backward::primitive_desc smb({probs, probs, 3}, user_scratchpad(), eng, sm);
    grad_s_ = Call(softmax_backward(smb), {{DNNL_ARG_DST, P}, {DNNL_ARG_DIFF_DST, dP}, {DNNL_ARG_DIFF_SRC, dS}});
    grad_q_ = mm(dS, k_, dq_, scaled);   // dQ = dS K / sqrt(d)
    grad_k_ = mm(dSt, q_, dk_, scaled);  // dK = dS^T Q / sqrt(d)
  }

  void forward(const RunCtx& run) override {
    scores_(run.stream);
    softmax_(run.stream);
    context_(run.stream);
  }

  void backward_data(const RunCtx& run) override {
    if (!has_diff_src()) return;
    grad_v_(run.stream);
    grad_p_(run.stream);
    grad_s_(run.stream);
    grad_q_(run.stream);
    grad_k_(run.stream);
  }

  Reads data_reads() const override { return {.inputs = true}; }

 protected:
  void on_bind() override {
    const auto at = [this](const dnnl::memory& base, std::int64_t offset) -> void* {
      auto* p = static_cast<char*>(base.get_data_handle());
      return p ? p + offset * size_ : nullptr;
    };
    q_.set_data_handle(at(src(), 0));
    k_.set_data_handle(at(src(), e_));
    kt_.set_data_handle(at(src(), e_));
    v_.set_data_handle(at(src(), 2 * e_));
    vt_.set_data_handle(at(src(), 2 * e_));
    o_.set_data_handle(at(dst(), 0));
    do_.set_data_handle(at(diff_dst(), 0));
    dq_.set_data_handle(at(diff_src(), 0));
    dk_.set_data_handle(at(diff_src(), e_));
    dv_.set_data_handle(at(diff_src(), 2 * e_));
    ds_t_.set_data_handle(ds_.get_data_handle());  // the transient, bound by now
  }

 private:
  std::int64_t heads_, n_ = 0, t_ = 0, e_ = 0, d_ = 0, size_ = 4;  // size_: bytes per element
  std::shared_ptr<float[]> p_;  // (N, heads, T, T) probabilities, kept from forward to backward
  dnnl::memory ds_, ds_t_;      // the scores' gradient (a transient) and its transposed view
  dnnl::memory q_, k_, kt_, v_, vt_, o_, do_, dq_, dk_, dv_;  // strided views of the bound buffers
  Call scores_, softmax_, context_, grad_v_, grad_p_, grad_s_, grad_q_, grad_k_;
};

}  // namespace elastic
