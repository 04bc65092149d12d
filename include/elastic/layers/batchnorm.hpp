// BatchNorm2d as torch.nn.BatchNorm2d, optionally followed in the same pass by
// a ReLU or ReLU6 (BatchNorm2dOptions::activation: the node's output is then
// the activation's). Two modes, switchable at run time:
//  - frozen (the default; fine-tuning, docs/method.md): normalizes with the
//    running statistics in training and inference alike; gamma and beta train.
//    The normalization is a per-channel affine map, run as host loops over the
//    channels-last rows: forward reads x and writes the activated output in one
//    sweep; backward_data writes dx = mask * dy * gamma * rstd and, when the
//    params train, sums their gradients in the same sweep. (oneDNN's kernels
//    take one sweep for the normalization, one for the activation and, in
//    backward, sum the gamma/beta gradients even when nothing wants them.)
//  - batch statistics: training forwards normalize with the batch's mean and
//    (biased) variance and update the running statistics as torch does
//    (momentum, unbiased variance), on oneDNN's primitives (the activation
//    in place after them); inference uses the running statistics.
// backward_weights takes the gamma/beta gradients when backward_data summed
// them in the same pass, and otherwise sums them itself (one sweep over x, the
// output and dy). Values are f32 or bf16 (the input's type); statistics,
// gamma and beta fp32. Under plans that run no backward of the convolution
// before it nor train gamma and beta, the frozen map folds into that
// convolution's kernel (FoldableMap, Graph::fold_maps) and forward does nothing.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "elastic/graph/node.hpp"
#include "elastic/layers/activation.hpp"
#include "elastic/layers/affine_grads.hpp"

namespace elastic {

struct BatchNorm2dOptions {
  std::int64_t num_features = 0;
  float eps = 1e-5f;
  float momentum = 0.1f;
  // Applied to the output in the same pass: relu or relu6 (nullopt: none).
  std::optional<Activation> activation = std::nullopt;
};

class BatchNorm2d final : public Node, public FoldableMap {
 public:
  BatchNorm2d(std::string name, BatchNorm2dOptions o) : Node(std::move(name)), o_(o) {
    if (o.num_features <= 0) fail("layer '{}' (batchnorm2d): num_features must be positive", this->name());
    if (o.activation) fuse_activation(*o.activation);
  }

  std::string_view type() const override { return "batchnorm2d"; }
  void set_batch_stats(bool on) { batch_stats_ = on; }
  bool batch_stats() const { return batch_stats_; }

  // Whether `kind` can be applied inside the node (fuse_activation).
  static bool fuses(Activation kind) { return kind == Activation::relu || kind == Activation::relu6; }

  // Applies `kind` (relu or relu6) to the output from now on; before the graph is finalized
  // (the ONNX importer fuses an activation that reads nothing else).
  void fuse_activation(Activation kind) {
    if (!fuses(kind))
      fail("layer '{}' (batchnorm2d): only relu and relu6 fuse into batch norm, not {}", name(),
           activation_spec(kind).name);
    o_.activation = kind;
    lo_ = 0.0f;
    hi_ = kind == Activation::relu6 ? 6.0f : std::numeric_limits<float>::infinity();
  }
  std::optional<Activation> activation() const { return o_.activation; }

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
    expect(in[0] == activation_desc(x, in[0].data_type()), "expects a channels-last input");
    set_output(in[0]);
    const auto& eng = ctx.engine();
    const memory::desc stat_md({o_.num_features}, memory::data_type::f32, memory::format_tag::a);
    const auto affine = flags::use_scale | flags::use_shift;

    gamma_ = store[weight_].value;
    beta_ = store[bias_].value;
    rmean_ = store.buffer(running_mean_).value;
    rvar_ = store.buffer(running_var_).value;
    const auto C = static_cast<std::size_t>(o_.num_features);
    bmean_.assign(C, 0.0f);
    bvar_.assign(C, 0.0f);
    const memory scale(stat_md, eng, gamma_), shift(stat_md, eng, beta_);
    const memory bmean(stat_md, eng, bmean_.data()), bvar(stat_md, eng, bvar_.data());

    batch_normalization_forward::primitive_desc fwd_b({prop_kind::forward_training, in[0], o_.eps, affine},
                                                      user_scratchpad(), eng);
    // oneDNN 2.6 offers backward_data only with gamma = 1, so backward_data runs the
    // full backward and sends gamma/beta gradients to scratch, where
    // backward_weights of the same pass finds them.
    batch_normalization_backward::primitive_desc bwd_b({prop_kind::backward, in[0], in[0], o_.eps, affine},
                                                       user_scratchpad(), eng, fwd_b);
    scratch_.assign(2 * C, 0.0f);
    const memory dscale(stat_md, eng, scratch_.data()), dshift(stat_md, eng, scratch_.data() + o_.num_features);
    fwd_batch_ = Call(batch_normalization_forward(fwd_b), {{DNNL_ARG_SRC, src()},
                                                           {DNNL_ARG_SCALE, scale},
                                                           {DNNL_ARG_SHIFT, shift},
                                                           {DNNL_ARG_MEAN, bmean},
                                                           {DNNL_ARG_VARIANCE, bvar},
                                                           {DNNL_ARG_DST, dst()}});
    // With an activation, its backward writes the normalization's output gradient into a
    // transient, from which the normalization's backward reads.
    const memory dz = o_.activation ? transient(in[0]) : diff_dst();
    // (oneDNN 2.6's batch-statistics backward also insists on the shift argument.)
    bwd_batch_ = Call(batch_normalization_backward(bwd_b), {{DNNL_ARG_SRC, src()},
                                                            {DNNL_ARG_SCALE, scale},
                                                            {DNNL_ARG_SHIFT, shift},
                                                            {DNNL_ARG_DIFF_DST, dz},
                                                            {DNNL_ARG_DIFF_SRC, diff_src()},
                                                            {DNNL_ARG_DIFF_SCALE, dscale},
                                                            {DNNL_ARG_DIFF_SHIFT, dshift},
                                                            {DNNL_ARG_MEAN, bmean},
                                                            {DNNL_ARG_VARIANCE, bvar}});
    act_fwd_ = act_bwd_ = {};
    if (o_.activation) {
      const auto spec = activation_spec(*o_.activation);
      eltwise_forward::primitive_desc f({prop_kind::forward_training, spec.algorithm, in[0], spec.alpha, spec.beta},
                                        user_scratchpad(), eng);
      eltwise_backward::primitive_desc b({spec.algorithm, in[0], in[0], spec.alpha, spec.beta}, user_scratchpad(), eng,
                                         f);
      act_fwd_ = Call(eltwise_forward(f), {{DNNL_ARG_SRC, dst()}, {DNNL_ARG_DST, dst()}});
      act_bwd_ =
          Call(eltwise_backward(b), {{DNNL_ARG_DST, dst()}, {DNNL_ARG_DIFF_DST, diff_dst()}, {DNNL_ARG_DIFF_SRC, dz}});
    }
    rows_ = x[0] * x[2] * x[3];
    rstd_.assign(C, 0.0f);
    a_.assign(C, 0.0f);
    shift_.assign(C, 0.0f);
    scale_mem_ = memory(stat_md, eng, a_.data());
    shift_mem_ = memory(stat_md, eng, shift_.data());
    folded_ = false;
    grads_.reserve(o_.num_features);
  }

  // The frozen map, for the convolution before it to apply (FoldableMap):
  // z = clamp(x * a + (beta - mean * a)).
  FoldableMap* foldable_map() override { return this; }
  bool map_applies(const RunCtx& run) const override { return !uses_batch(run); }
  void prepare_map() override {
    set_slope();
    for (std::size_t c = 0; c < a_.size(); ++c) shift_[c] = beta_[c] - rmean_[c] * a_[c];
  }
  const dnnl::memory& map_scale() const override { return scale_mem_; }
  const dnnl::memory& map_shift() const override { return shift_mem_; }
  float map_lo() const override { return lo_; }
  float map_hi() const override { return hi_; }
  void set_folded(bool on) override { folded_ = on; }

  void forward(const RunCtx& run) override {
    if (folded_ && map_applies(run)) return;  // the convolution before wrote the output
    if (!uses_batch(run)) {
      run.stream.wait();
      forward_frozen();
      return;
    }
    fwd_batch_(run.stream);
    if (act_fwd_) act_fwd_(run.stream);
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
    if (uses_batch(run)) {
      if (act_bwd_) act_bwd_(run.stream);
      bwd_batch_(run.stream);
      sums_in_scratch_ = true;
    } else {
      run.stream.wait();
      backward_frozen();
    }
    data_pass_ = run.pass;
  }

  // d gamma[c] = sum dz * (x - mean[c]) / sqrt(var[c] + eps), d beta[c] = sum dz, over the
  // N*H*W rows, with dz the gradient at the normalization's output (dy where the activation
  // passes it) and the statistics the forward used.
  void backward_weights(const RunCtx& run) override {
    run.stream.wait();
    if (run.pass != 0 && data_pass_ == run.pass && sums_in_scratch_) {
      std::copy_n(scratch_.data(), o_.num_features, dgamma_);
      std::copy_n(scratch_.data() + o_.num_features, o_.num_features, dbeta_);
      return;
    }
    const bool batch = uses_batch(run);
    set_rstd(batch ? bvar_.data() : rvar_);
    sums(batch ? bmean_.data() : rmean_, dgamma_, dbeta_, false);
  }

  Reads data_reads() const override { return {.inputs = true, .output = o_.activation.has_value()}; }
  Reads weights_reads() const override { return {.inputs = true, .output = o_.activation.has_value()}; }

 protected:
  void on_bind() override {
    dgamma_ = grad_of(weight_);
    dbeta_ = grad_of(bias_);
  }

 private:
  bool uses_batch(const RunCtx& run) const { return batch_stats_ && run.training; }

  // In float, as oneDNN's kernels and PyTorch compute it: the frozen map then rounds as
  // theirs does. (A last-bit difference moves outputs that sit on an activation's kink to
  // its other side; over a few training steps that showed as a 3e-3 error in the biases'
  // change, against 3e-6 when rounding alike: tests/parity/train_steps_test.py.)
  void set_rstd(const float* var) {
    for (std::int64_t c = 0; c < o_.num_features; ++c)
      rstd_[static_cast<std::size_t>(c)] = 1.0f / std::sqrt(var[c] + o_.eps);
  }

  // Calls f(pass) with pass(z) true where the activation passes the gradient at output z
  // (always without an activation).
  template <class F>
  void with_mask(F&& f) const {
    if (!o_.activation) return f([](float) ELASTIC_INLINE { return true; });
    const float lo = lo_, hi = hi_;
    f([=](float z) ELASTIC_INLINE { return (z > lo) & (z < hi); });  // & : no branch, vectorizes
  }

  // rstd_ and a_ = gamma * rstd for the running statistics (the frozen map's slope).
  void set_slope() {
    set_rstd(rvar_);
    for (std::size_t c = 0; c < a_.size(); ++c) a_[c] = gamma_[c] * rstd_[c];
  }

  // z = act((x - mean) * gamma * rstd + beta) with the running statistics (without an
  // activation the clamp is to [-inf, inf], which changes nothing).
  void forward_frozen() {
    set_slope();
    const std::int64_t C = o_.num_features;
    const float *a = a_.data(), *mean = rmean_, *beta = beta_;
    const float lo = lo_, hi = hi_;
    with_element(src().get_desc().data_type(), [&]<class T>(std::type_identity<T>) {
      const T* __restrict x = ptr_as<T>(src());
      T* __restrict z = ptr_as<T>(dst());
      host::parallel_rows(rows_, grads_.threads(), [&](std::int64_t begin, std::int64_t end, int) ELASTIC_INLINE {
        for (std::int64_t i = begin * C; i < end * C; i += C) {
#pragma omp simd
          for (std::int64_t c = 0; c < C; ++c) {
            float y = (host::to_float(x[i + c]) - mean[c]) * a[c] + beta[c];
            y = y < lo ? lo : y;  // (not std::min/max: their references defeat vectorizing)
            y = y > hi ? hi : y;
            z[i + c] = host::from_float<T>(y);
          }
        }
      });
    });
  }

  // dx = dz * gamma * rstd with the running statistics; the gamma/beta sums too when the
  // params train.
  void backward_frozen() {
    set_slope();
    sums_in_scratch_ = trained();
    if (sums_in_scratch_) {
      sums(rmean_, scratch_.data(), scratch_.data() + o_.num_features, true);
      return;
    }
    const std::int64_t C = o_.num_features;
    const float* a = a_.data();
    with_element(src().get_desc().data_type(), [&]<class T>(std::type_identity<T>) {
      const T* __restrict z = ptr_as<T>(dst());
      const T* __restrict dy = ptr_as<T>(diff_dst());
      T* __restrict dx = ptr_as<T>(diff_src());
      with_mask([&](auto pass) {
        host::parallel_rows(rows_, grads_.threads(), [&](std::int64_t begin, std::int64_t end, int) ELASTIC_INLINE {
          for (std::int64_t i = begin * C; i < end * C; i += C) {
#pragma omp simd
            for (std::int64_t c = 0; c < C; ++c) {
              const float g = host::to_float(dy[i + c]);
              dx[i + c] = host::from_float<T>((pass(host::to_float(z[i + c])) ? g : 0.0f) * a[c]);
            }
          }
        });
      });
    });
  }

  // The gamma/beta sums with statistics (mean, rstd_) into (dgamma, dbeta), writing
  // dx = dz * a_ in the same sweep when `with_dx`.
  void sums(const float* mean, float* dgamma, float* dbeta, bool with_dx) {
    const std::int64_t C = o_.num_features;
    const float *rstd = rstd_.data(), *a = a_.data();
    with_element(src().get_desc().data_type(), [&]<class T>(std::type_identity<T>) {
      const T* x = ptr_as<T>(src());
      const T* z = ptr_as<T>(dst());
      const T* dy = ptr_as<T>(diff_dst());
      T* dx = with_dx ? ptr_as<T>(diff_src()) : nullptr;
      with_mask([&](auto pass) {
        const auto grad = [=](std::int64_t r, std::int64_t c) ELASTIC_INLINE {
          const float g = host::to_float(dy[r * C + c]);
          return pass(host::to_float(z[r * C + c])) ? g : 0.0f;
        };
        const auto xhat = [=](std::int64_t r, std::int64_t c)
                              ELASTIC_INLINE { return (host::to_float(x[r * C + c]) - mean[c]) * rstd[c]; };
        if (with_dx)
          grads_.run_with(
              rows_, grad, xhat,
              [=](std::int64_t r, std::int64_t c, float g)
                  ELASTIC_INLINE { dx[r * C + c] = host::from_float<T>(g * a[c]); },
              dgamma, dbeta);
        else
          grads_.run_with(
              rows_, grad, xhat, [](std::int64_t, std::int64_t, float) ELASTIC_INLINE {}, dgamma, dbeta);
      });
    });
  }

  BatchNorm2dOptions o_;
  // The activation's clamp: relu [0, inf], relu6 [0, 6], none [-inf, inf].
  float lo_ = -std::numeric_limits<float>::infinity(), hi_ = std::numeric_limits<float>::infinity();
  bool batch_stats_ = false;
  int weight_ = -1, bias_ = -1, running_mean_ = -1, running_var_ = -1;
  float *gamma_ = nullptr, *beta_ = nullptr, *dgamma_ = nullptr, *dbeta_ = nullptr;
  float *rmean_ = nullptr, *rvar_ = nullptr;  // (C) running statistics, in the buffer arena
  std::vector<float> bmean_, bvar_;           // (C) statistics of the last training batch
  std::vector<float> scratch_;                // (2, C) gamma/beta gradients of the last backward_data
  std::uint64_t data_pass_ = 0;               // the pass that backward_data last ran in
  bool sums_in_scratch_ = true;               // whether that backward_data summed them
  std::vector<float> rstd_;                   // (C) 1 / sqrt(var + eps) of the statistics in use
  std::vector<float> a_;                      // (C) gamma * rstd: the frozen map's slope
  std::vector<float> shift_;                  // (C) beta - mean * a_: its shift when folded
  dnnl::memory scale_mem_, shift_mem_;        // over a_ and shift_
  bool folded_ = false;                       // set_folded
  detail::AffineGrads grads_;
  std::int64_t rows_ = 0;  // N*H*W
  Call fwd_batch_, bwd_batch_, act_fwd_, act_bwd_;
};

}  // namespace elastic
