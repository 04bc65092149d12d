// Softmax cross-entropy from logits (N, C) to the scalar mean loss {1}, with
// labels set per batch. Rows labelled kIgnore (padding of a short last batch)
// count neither in the loss nor in the accuracy. oneDNN's log-softmax gives
// log p directly, so the loss -log p[label] stays finite for extreme logits.
// The loss is fp32 in any graph: bf16 logits are converted first, and their
// gradient is rounded to bf16 when written.
#pragma once

#include <cmath>
#include <vector>

#include "elastic/graph/node.hpp"

namespace elastic {

class SoftmaxCrossEntropy final : public Node {
 public:
  static constexpr std::int32_t kIgnore = -1;

  explicit SoftmaxCrossEntropy(std::string name) : Node(std::move(name)) {}
  std::string_view type() const override { return "softmax_cross_entropy"; }

  void setup(std::span<const dnnl::memory::desc> in, Context& ctx, ParamStore&) override {
    using namespace dnnl;
    expect(in.size() == 1 && in[0].dims().size() == 2, "expects logits (N, C)");
    n_ = in[0].dims()[0];
    c_ = in[0].dims()[1];
    set_output(plain_desc({1}));
    if (labels_.size() != static_cast<std::size_t>(n_))
      labels_.assign(static_cast<std::size_t>(n_), kIgnore);  // a re-setup keeps the batch's labels
    logp_.assign(static_cast<std::size_t>(n_ * c_), 0.0f);
    const auto f32 = plain_desc({n_, c_});
    const memory logp(f32, ctx.engine(), logp_.data());
    memory logits = src();
    convert_ = {};
    if (in[0].data_type() != memory::data_type::f32) {
      logits32_.assign(static_cast<std::size_t>(n_ * c_), 0.0f);
      logits = memory(f32, ctx.engine(), logits32_.data());
      convert_ = reorder_call(src(), logits);
    }
    // Log-softmax keeps tiny probabilities representable: the loss of a row is exactly -logp[label].
    logsoftmax_forward::primitive_desc pd({prop_kind::forward_inference, f32, 1}, user_scratchpad(), ctx.engine());
    softmax_ = Call(logsoftmax_forward(pd), {{DNNL_ARG_SRC, logits}, {DNNL_ARG_DST, logp}});
  }

  // Labels of the next batch: N values in [0, C), or kIgnore. Fewer than N
  // labels leave the remaining rows ignored.
  void set_labels(std::span<const std::int32_t> labels) {
    if (static_cast<std::int64_t>(labels.size()) > n_)
      fail("layer '{}': {} labels for a batch of {}", name(), labels.size(), n_);
    count_ = 0;
    for (std::size_t i = 0; i < labels_.size(); ++i) {
      const std::int32_t l = i < labels.size() ? labels[i] : kIgnore;
      if (l != kIgnore && (l < 0 || l >= c_))
        fail("layer '{}': label {} of sample {} is outside [0, {})", name(), l, i, c_);
      labels_[i] = l;
      count_ += l != kIgnore;
    }
  }

  void forward(const RunCtx& run) override {
    if (convert_) convert_(run.stream);
    softmax_(run.stream);
    double sum = 0;
    correct_ = 0;
    for (std::int64_t n = 0; n < n_; ++n) {
      const std::int32_t l = labels_[static_cast<std::size_t>(n)];
      if (l == kIgnore) continue;
      const float* row = logp_.data() + n * c_;
      sum -= row[l];
      std::int64_t best = 0;
      for (std::int64_t c = 1; c < c_; ++c)
        if (row[c] > row[best]) best = c;
      correct_ += best == l;
    }
    loss_ = count_ ? static_cast<float>(sum / double(count_)) : 0.0f;
    ptr(dst())[0] = loss_;
  }

  // d logits = (softmax - onehot(label)) * d loss / count.
  void backward_data(const RunCtx&) override {
    if (!has_diff_src()) return;
    const float scale = count_ ? ptr(diff_dst())[0] / float(count_) : 0.0f;
    with_element(diff_src().get_desc().data_type(), [&]<class T>(std::type_identity<T>) {
      T* dx = ptr_as<T>(diff_src());
      for (std::int64_t n = 0; n < n_; ++n) {
        const std::int32_t l = labels_[static_cast<std::size_t>(n)];
        T* d = dx + n * c_;
        const float* row = logp_.data() + n * c_;
        for (std::int64_t c = 0; c < c_; ++c) {
          const float p = l == kIgnore ? 0.0f : std::exp(row[c]) * scale;
          d[c] = T(c == l ? p - scale : p);
        }
      }
    });
  }

  float loss() const { return loss_; }
  std::int64_t correct() const { return correct_; }
  std::int64_t count() const { return count_; }
  // log softmax of the last forward, (N, C) row-major.
  std::span<const float> log_probabilities() const { return logp_; }

 private:
  std::int64_t n_ = 0, c_ = 0, count_ = 0, correct_ = 0;
  float loss_ = 0;
  std::vector<std::int32_t> labels_;
  std::vector<float> logp_;
  std::vector<float> logits32_;  // bf16 logits converted (bf16 graphs only)
  Call convert_, softmax_;
};

}  // namespace elastic
