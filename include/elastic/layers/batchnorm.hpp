// BatchNorm2d as torch.nn.BatchNorm2d, on oneDNN's batch normalization
// primitives, in two modes switchable at run time:
//  - frozen (the default; fine-tuning, docs/method.md): normalizes with the
//    running statistics in training and inference alike; gamma and beta train;
//  - batch statistics: training forwards normalize with the batch's mean and
//    (biased) variance and update the running statistics as torch does
//    (momentum, unbiased variance); inference uses the running statistics.
// backward_data is oneDNN's full backward, which also sums the gamma/beta
// gradients; backward_weights takes those when backward_data ran in the same
// pass, and otherwise computes the two per-channel sums here (one pass over x
// and dy), cheaper than oneDNN's backward with a diff_src nobody asked for.
// Values are f32 or bf16 (the input's type); statistics, gamma and beta fp32.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "elastic/graph/node.hpp"
#include "elastic/layers/affine_grads.hpp"

namespace elastic {

struct BatchNorm2dOptions {
  std::int64_t num_features = 0;
  float eps = 1e-5f;
  float momentum = 0.1f;
};

class BatchNorm2d final : public Node {
 public:
  BatchNorm2d(std::string name, BatchNorm2dOptions o) : Node(std::move(name)), o_(o) {
    if (o.num_features <= 0) fail("layer '{}' (batchnorm2d): num_features must be positive", this->name());
  }

  std::string_view type() const override { return "batchnorm2d"; }
  void set_batch_stats(bool on) { batch_stats_ = on; }
  bool batch_stats() const { return batch_stats_; }

  void declare(ParamStore& store) override {
    const Shape c{o_.num_features};
    weight_ = add_param(store, "weight", c, ParamRole::norm_scale, Init::one());
    bias_ = add_param(store, "bias", c, ParamRole::norm_shift, Init::zero());
    running_mean_ = store.add_buffer(name() + ".running_mean", c, 0.0f);
    running_var_ = store.add_buffer(name() + ".running_var", c, 1.0f);
  }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore& store) override {
    using namespace dnnl;
    using flags = normalization_flags;
    expect(in.size() == 1, "expects one input");
    const auto x = in[0].dims();
    expect(x.size() == 4 && x[1] == o_.num_features,
           fmt::format("expects input (N, {}, H, W), got {}", o_.num_features, to_string(x)));
    set_output(in[0]);
    const auto& eng = ctx.engine();
    const memory::desc stat_md({o_.num_features}, memory::data_type::f32, memory::format_tag::a);
    const auto affine = flags::use_scale | flags::use_shift;
    const auto global = affine | flags::use_global_stats;

    gamma_ = store[weight_].value;
    beta_ = store[bias_].value;
    rmean_ = store.buffer(running_mean_).value;
    rvar_ = store.buffer(running_var_).value;
    bmean_.assign(static_cast<std::size_t>(o_.num_features), 0.0f);
    bvar_.assign(static_cast<std::size_t>(o_.num_features), 0.0f);
    const memory scale(stat_md, eng, gamma_), shift(stat_md, eng, beta_);
    const memory rmean(stat_md, eng, rmean_), rvar(stat_md, eng, rvar_);
    const memory bmean(stat_md, eng, bmean_.data()), bvar(stat_md, eng, bvar_.data());

    batch_normalization_forward::primitive_desc fwd_g({prop_kind::forward_training, in[0], o_.eps, global},
                                                      user_scratchpad(), eng);
    batch_normalization_forward::primitive_desc fwd_b({prop_kind::forward_training, in[0], o_.eps, affine},
                                                      user_scratchpad(), eng);
    // oneDNN 2.6 offers backward_data only with gamma = 1, so backward_data runs the
    // full backward and sends gamma/beta gradients to scratch, where
    // backward_weights of the same pass finds them.
    batch_normalization_backward::primitive_desc bwd_g({prop_kind::backward, in[0], in[0], o_.eps, global},
                                                       user_scratchpad(), eng, fwd_g);
    batch_normalization_backward::primitive_desc bwd_b({prop_kind::backward, in[0], in[0], o_.eps, affine},
                                                       user_scratchpad(), eng, fwd_b);
    scratch_.assign(static_cast<std::size_t>(2 * o_.num_features), 0.0f);
    const memory dscale(stat_md, eng, scratch_.data()), dshift(stat_md, eng, scratch_.data() + o_.num_features);
    const Args common{{DNNL_ARG_SRC, src()}, {DNNL_ARG_SCALE, scale}, {DNNL_ARG_SHIFT, shift}};
    const auto with = [&](Args a, std::initializer_list<std::pair<const int, memory>> more) {
      a.insert(more);
      return a;
    };
    fwd_global_ = Call(batch_normalization_forward(fwd_g),
                       with(common, {{DNNL_ARG_MEAN, rmean}, {DNNL_ARG_VARIANCE, rvar}, {DNNL_ARG_DST, dst()}}));
    fwd_batch_ = Call(batch_normalization_forward(fwd_b),
                      with(common, {{DNNL_ARG_MEAN, bmean}, {DNNL_ARG_VARIANCE, bvar}, {DNNL_ARG_DST, dst()}}));
    // (oneDNN 2.6's batch-statistics backward also insists on the shift argument.)
    const Args bwd{{DNNL_ARG_SRC, src()},           {DNNL_ARG_SCALE, scale},         {DNNL_ARG_SHIFT, shift},
                   {DNNL_ARG_DIFF_DST, diff_dst()}, {DNNL_ARG_DIFF_SRC, diff_src()}, {DNNL_ARG_DIFF_SCALE, dscale},
                   {DNNL_ARG_DIFF_SHIFT, dshift}};
    bwd_global_ =
        Call(batch_normalization_backward(bwd_g), with(bwd, {{DNNL_ARG_MEAN, rmean}, {DNNL_ARG_VARIANCE, rvar}}));
    bwd_batch_ =
        Call(batch_normalization_backward(bwd_b), with(bwd, {{DNNL_ARG_MEAN, bmean}, {DNNL_ARG_VARIANCE, bvar}}));
    rows_ = x[0] * x[2] * x[3];
    rstd_.assign(static_cast<std::size_t>(o_.num_features), 0.0f);
    grads_.reserve(o_.num_features);
  }

  void forward(const RunCtx& run) override {
    if (!uses_batch(run)) {
      fwd_global_(run.stream);
      return;
    }
    fwd_batch_(run.stream);
    run.stream.wait();
    const float m = o_.momentum;
    const float unbias = rows_ > 1 ? float(rows_) / float(rows_ - 1) : 1.0f;
    for (std::int64_t c = 0; c < o_.num_features; ++c) {
      rmean_[c] = (1 - m) * rmean_[c] + m * bmean_[static_cast<std::size_t>(c)];
      rvar_[c] = (1 - m) * rvar_[c] + m * bvar_[static_cast<std::size_t>(c)] * unbias;
    }
  }

  void backward_data(const RunCtx& run) override {
    if (!has_diff_src()) return;
    (uses_batch(run) ? bwd_batch_ : bwd_global_)(run.stream);
    data_pass_ = run.pass;
  }

  // d gamma[c] = sum dy * (x - mean[c]) / sqrt(var[c] + eps), d beta[c] = sum dy,
  // over the N*H*W rows of the channels-last tensors, with the statistics the forward used.
  void backward_weights(const RunCtx& run) override {
    run.stream.wait();
    if (run.pass != 0 && data_pass_ == run.pass) {
      std::copy_n(scratch_.data(), o_.num_features, dgamma_);
      std::copy_n(scratch_.data() + o_.num_features, o_.num_features, dbeta_);
      return;
    }
    const bool batch = uses_batch(run);
    const float* mean = batch ? bmean_.data() : rmean_;
    const float* var = batch ? bvar_.data() : rvar_;
    for (std::int64_t c = 0; c < o_.num_features; ++c)
      rstd_[static_cast<std::size_t>(c)] = static_cast<float>(1.0 / std::sqrt(double(var[c]) + o_.eps));
    const float* rstd = rstd_.data();
    const std::int64_t C = o_.num_features;
    with_element(src().get_desc().data_type(), [&]<class T>(std::type_identity<T>) {
      const T* x = ptr_as<T>(src());
      grads_.run(
          rows_, ptr_as<T>(diff_dst()),
          [=](std::int64_t r, std::int64_t c) { return (static_cast<float>(x[r * C + c]) - mean[c]) * rstd[c]; },
          dgamma_, dbeta_);
    });
  }

  Reads data_reads() const override { return {.inputs = true}; }
  Reads weights_reads() const override { return {.inputs = true}; }

 protected:
  void on_bind() override {
    dgamma_ = grad_of(weight_);
    dbeta_ = grad_of(bias_);
  }

 private:
  bool uses_batch(const RunCtx& run) const { return batch_stats_ && run.training; }

  BatchNorm2dOptions o_;
  bool batch_stats_ = false;
  int weight_ = -1, bias_ = -1, running_mean_ = -1, running_var_ = -1;
  float *gamma_ = nullptr, *beta_ = nullptr, *dgamma_ = nullptr, *dbeta_ = nullptr;
  float *rmean_ = nullptr, *rvar_ = nullptr;  // (C) running statistics, in the buffer arena
  std::vector<float> bmean_, bvar_;           // (C) statistics of the last training batch
  std::vector<float> scratch_;                // (2, C) gamma/beta gradients of the last backward_data
  std::uint64_t data_pass_ = 0;               // the pass that backward_data last ran in
  std::vector<float> rstd_;                   // (C) 1 / sqrt(var + eps) of the statistics in use
  detail::AffineGrads grads_;
  std::int64_t rows_ = 0;  // N*H*W
  Call fwd_global_, fwd_batch_, bwd_global_, bwd_batch_;
};

}  // namespace elastic
