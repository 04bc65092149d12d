// The pieces of a training loop over in-memory image sets besides the step
// (train/step.hpp): running metrics, a batcher that shuffles per epoch and
// writes normalized batches straight into the model's input buffer, and
// evaluation. Nothing here allocates per step.
#pragma once

#include <cmath>
#include <numeric>
#include <vector>

#include "elastic/core/random.hpp"
#include "elastic/data/idx.hpp"
#include "elastic/models/model.hpp"

namespace elastic {

// Running loss and accuracy over samples.
struct Metrics {
  double loss_sum = 0;  // sum over samples of their loss
  std::int64_t correct = 0, count = 0;

  void add(double mean_loss, std::int64_t batch_correct, std::int64_t batch_count) {
    loss_sum += mean_loss * double(batch_count);
    correct += batch_correct;
    count += batch_count;
  }
  double loss() const { return count ? loss_sum / double(count) : 0.0; }
  double accuracy() const { return count ? double(correct) / double(count) : 0.0; }
};

// Batches of a grayscale ImageSet for a model of input (B, C, H, W) with the
// set's H and W; the gray channel is repeated C times and normalized as
// (x / 255 - mean) / stddev.
class ImageBatcher {
 public:
  ImageBatcher(const data::ImageSet& set, float mean, float stddev, std::uint64_t seed)
      : set_(set), mean_(mean), stddev_(stddev), seed_(seed), order_(static_cast<std::size_t>(set.size())) {
    if (set.size() == 0) fail("cannot batch an empty image set");
    std::iota(order_.begin(), order_.end(), 0);
  }

  std::int64_t size() const { return set_.size(); }
  std::int64_t batches(std::int64_t batch, bool drop_last) const {
    return drop_last ? size() / batch : (size() + batch - 1) / batch;
  }

  // Sample order of an epoch: a seeded permutation, or the set's order.
  void start_epoch(std::uint64_t epoch, bool shuffle) {
    std::iota(order_.begin(), order_.end(), 0);
    if (!shuffle) return;
    Rng rng(mix64(seed_ ^ mix64(epoch)));
    for (std::size_t i = order_.size() - 1; i > 0; --i) std::swap(order_[i], order_[rng.below(i + 1)]);
  }

  // Writes batch `b` of the epoch into the model's input and labels. A short
  // last batch is padded with zero images whose labels are ignored by the loss.
  // Returns the number of real samples.
  std::int64_t load(Model& m, std::int64_t b) {
    const std::int64_t B = m.input_shape[0], C = m.input_shape[1], H = m.input_shape[2], W = m.input_shape[3];
    if (H != set_.height || W != set_.width)
      fail("model '{}' takes {}x{} images but the data set has {}x{}", m.name, H, W, set_.height, set_.width);
    labels_.resize(static_cast<std::size_t>(B));
    float* x = m.graph->value_data(m.images);  // NHWC
    const std::int64_t first = b * B, n = std::min(B, size() - first);
    if (n <= 0) fail("batch {} is past the end of a set of {} images", b, size());
    const float scale = 1.0f / (255.0f * stddev_), shift = -mean_ / stddev_;
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < B; ++i) {
      float* out = x + i * H * W * C;
      if (i >= n) {
        std::fill(out, out + H * W * C, 0.0f);
        continue;
      }
      const std::uint8_t* in = set_.pixels.data() + order_[static_cast<std::size_t>(first + i)] * H * W;
      for (std::int64_t p = 0; p < H * W; ++p)
        for (std::int64_t c = 0; c < C; ++c) out[p * C + c] = float(in[p]) * scale + shift;
    }
    for (std::int64_t i = 0; i < B; ++i)
      labels_[static_cast<std::size_t>(i)] =
          i < n ? set_.labels[static_cast<std::size_t>(order_[static_cast<std::size_t>(first + i)])]
                : SoftmaxCrossEntropy::kIgnore;
    m.loss_node().set_labels(labels_);
    return n;
  }

 private:
  const data::ImageSet& set_;
  float mean_, stddev_;
  std::uint64_t seed_;
  std::vector<std::int64_t> order_;
  std::vector<std::int32_t> labels_;
};

// Loss and accuracy of the model on a whole set, in inference mode.
inline Metrics evaluate(Model& m, ImageBatcher& batches) {
  Metrics metrics;
  batches.start_epoch(0, false);
  for (std::int64_t b = 0; b < batches.batches(m.batch(), false); ++b) {
    batches.load(m, b);
    m.graph->forward(false);
    auto& loss = m.loss_node();
    metrics.add(loss.loss(), loss.correct(), loss.count());
  }
  return metrics;
}

}  // namespace elastic
