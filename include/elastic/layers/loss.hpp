// Softmax cross-entropy from logits (N, C) to the scalar mean loss {1}, with
// labels set per batch. Rows labelled kIgnore (padding of a short last batch)
// count neither in the loss nor in the accuracy. oneDNN's log-softmax gives
// log p directly, so the loss -log p[label] stays finite for extreme logits.
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
    const memory logp(in[0], ctx.engine(), logp_.data());
    // Log-softmax keeps tiny probabilities representable: the loss of a row is exactly -logp[label].
    logsoftmax_forward::primitive_desc pd({prop_kind::forward_inference, in[0], 1}, user_scratchpad(), ctx.engine());
    softmax_ = Call(logsoftmax_forward(pd), {{DNNL_ARG_SRC, src()}, {DNNL_ARG_DST, logp}});
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
    float* dx = ptr(diff_src());
    const float scale = count_ ? ptr(diff_dst())[0] / float(count_) : 0.0f;
    for (std::int64_t n = 0; n < n_; ++n) {
      const std::int32_t l = labels_[static_cast<std::size_t>(n)];
      float* d = dx + n * c_;
      const float* row = logp_.data() + n * c_;
      for (std::int64_t c = 0; c < c_; ++c) d[c] = l == kIgnore ? 0.0f : std::exp(row[c]) * scale;
      if (l != kIgnore) d[l] -= scale;
    }
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
  Call softmax_;
};

}  // namespace elastic
