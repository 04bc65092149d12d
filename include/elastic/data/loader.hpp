// The input pipeline: a loader over one split that shuffles per epoch
// (seeded), decodes, resizes, augments and normalizes on background threads
// into a bounded ring of prefetched batches, and hands the trainer batch
// after batch. Its output depends only on (seed, epoch, position in the
// epoch), never on thread timing, so runs are reproducible and a resumed run
// sees the batches an uninterrupted one would.
//
// It serves the trainer's batch-source interface (start_epoch, batches,
// load) and reports how long the consumer waited for data.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "elastic/core/denormals.hpp"
#include "elastic/core/random.hpp"
#include "elastic/core/timer.hpp"
#include "elastic/data/datasets.hpp"
#include "elastic/data/transforms.hpp"
#include "elastic/layers/loss.hpp"
#include "elastic/models/model.hpp"
#include "elastic/train/loop.hpp"

namespace elastic::data {

struct LoaderOptions {
  std::int64_t batch = 0;              // samples per batch
  std::int64_t height = 0, width = 0;  // output image size
  Normalize normalize;
  bool augment = false;    // random flip and rotation (training)
  bool drop_last = false;  // leave out a short last batch (training)
  std::uint64_t seed = 0;
  int workers = 1;        // decoding threads; 0 decodes on the caller's thread
  int prefetch = 4;       // batches decoded ahead of the consumer
  bool skip_bad = false;  // an undecodable file: warning, sample left out of the loss; else an error
};

// Normalization of a model's pretrained weights.
inline Normalize normalize_for(const Model& m) {
  Normalize n;
  for (int c = 0; c < 3; ++c) {
    n.mean[c] = m.preprocess.mean[c];
    n.stddev[c] = m.preprocess.stddev[c];
  }
  return n;
}

// Loader options for a model's input: its batch and size, its normalization.
inline LoaderOptions loader_options_for(const Model& m, bool train, std::uint64_t seed) {
  LoaderOptions o;
  o.batch = m.batch();
  o.height = m.input_shape[2];
  o.width = m.input_shape[3];
  o.normalize = normalize_for(m);
  o.augment = train;
  o.drop_last = train;
  o.seed = seed;
  return o;
}

// One batch: NHWC images and labels; samples past `count` (a short last
// batch) and skipped files are zero images with label kIgnore.
struct Batch {
  std::vector<float> images;
  std::vector<std::int32_t> labels;
  std::int64_t index = -1, count = 0;
};

class Loader {
 public:
  Loader(const Split& split, LoaderOptions o) : split_(split), o_(std::move(o)) {
    if (o_.batch < 1) usage_fail("loader: batch size must be at least 1, got {}", o_.batch);
    if (o_.height < 1 || o_.width < 1) usage_fail("loader: image size {}x{} is empty", o_.width, o_.height);
    if (o_.workers < 0) usage_fail("loader: {} workers", o_.workers);
    if (o_.prefetch < 1) usage_fail("loader: prefetch depth must be at least 1, got {}", o_.prefetch);
    if (split_.size() == 0) fail("loader: the split is empty");
    if (o_.drop_last && split_.size() < o_.batch)
      fail("loader: {} samples make no full batch of {}", split_.size(), o_.batch);
    order_.resize(static_cast<std::size_t>(split_.size()));
    std::iota(order_.begin(), order_.end(), 0);
    const int slots = o_.workers == 0 ? 1 : o_.prefetch;
    slots_.resize(static_cast<std::size_t>(slots));
    for (auto& s : slots_) {
      s.batch.images.resize(static_cast<std::size_t>(o_.batch * o_.height * o_.width * 3));
      s.batch.labels.resize(static_cast<std::size_t>(o_.batch));
    }
    sync_worker_.indices.reserve(static_cast<std::size_t>(o_.batch));
    total_ = batches();
    // Workers flush denormals exactly when the thread that made the loader does (see Context).
    const bool flush = flushing_denormals();
    for (int w = 0; w < o_.workers; ++w)
      threads_.emplace_back([this, flush] {
        set_flush_denormals(flush);
        work();
      });
  }

  ~Loader() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Called from a worker (under the loader's lock) for each skipped file.
  std::function<void(const std::string&)> warn = [](const std::string& line) {
    fmt::print(stderr, "warning: {}\n", line);
  };

  std::int64_t size() const { return split_.size(); }
  std::int64_t batch_size() const { return o_.batch; }
  std::int64_t batches() const { return o_.drop_last ? size() / o_.batch : (size() + o_.batch - 1) / o_.batch; }
  // The trainer's form: the model's batch must be the loader's.
  std::int64_t batches(std::int64_t batch, bool drop_last) const {
    if (batch != o_.batch) fail("loader batches {} samples but the model takes {}", o_.batch, batch);
    if (drop_last && !o_.drop_last) return size() / o_.batch;
    return batches();
  }

  // Starts epoch `epoch`: a seeded permutation when shuffling, the split's
  // order otherwise. Batches prefetched for the previous epoch are dropped.
  void start_epoch(std::uint64_t epoch, bool shuffle) {
    std::lock_guard lock(mu_);
    epoch_ = epoch;
    std::iota(order_.begin(), order_.end(), 0);
    if (shuffle) {
      Rng rng(mix64(o_.seed ^ mix64(epoch)));
      for (std::size_t i = order_.size() - 1; i > 0; --i) std::swap(order_[i], order_[rng.below(i + 1)]);
    }
    restart_locked(0);
  }

  // Batch `b` of the current epoch, waiting for it if it is not decoded yet.
  // Valid until the next call. In-order requests are served from the prefetch
  // ring; asking for the batch just returned returns it again; any other order
  // restarts the pipeline at `b`.
  const Batch& get(std::int64_t b) {
    if (b < 0 || b >= total_) fail("batch {} is outside the epoch's {} batches", b, total_);
    Stopwatch sw;
    std::unique_lock lock(mu_);
    if (o_.workers == 0) {
      Slot& s = slots_[0];
      if (!(s.state == Slot::ready && s.batch.index == b && s.generation == generation_)) {
        assign_locked(b, s, sync_worker_);
        lock.unlock();
        fill(s, sync_worker_);
        lock.lock();
        s.state = Slot::ready;
        skipped_ += s.skipped;
      }
      held_ = b;
      return finish_get(s, sw);
    }
    if (b == held_) {
      Slot& s = slot(b);
      wait_ms_ += sw.elapsed_ms();
      if (s.error) std::rethrow_exception(s.error);
      return s.batch;
    }
    release_held_locked();
    if (b != next_get_) restart_locked(b);
    Slot& s = slot(b);
    ready_cv_.wait(lock, [&] { return s.state == Slot::ready && s.generation == generation_ && s.batch.index == b; });
    skipped_ += s.skipped;  // counted when delivered: a prefetched batch that a restart drops is not
    next_get_ = b + 1;
    held_ = b;
    return finish_get(s, sw);
  }

  // Copies batch `b` into the model's input and labels; returns the number of
  // real samples.
  std::int64_t load(Model& m, std::int64_t b) {
    if (m.batch() != o_.batch) fail("loader batches {} samples but model '{}' takes {}", o_.batch, m.name, m.batch());
    check_model(m);
    const Batch& batch = get(b);
    std::memcpy(m.graph->value_data(m.images), batch.images.data(), batch.images.size() * sizeof(float));
    m.loss_node().set_labels(batch.labels);
    return batch.count;
  }

  // The model's input must be (B, 3, height, width).
  void check_model(const Model& m) const {
    if (m.input_shape[1] != 3 || m.input_shape[2] != o_.height || m.input_shape[3] != o_.width)
      fail("model '{}' takes {} images but the loader makes 3x{}x{}", m.name, to_string(m.input_shape), o_.height,
           o_.width);
  }

  // Total time the consumer spent waiting in get/load.
  // Bytes of the prefetch ring's batches (images and labels; TrainingMemory's "data").
  std::int64_t memory_bytes() const {
    std::int64_t bytes = 0;
    for (const auto& s : slots_)
      bytes += std::int64_t(s.batch.images.size() * sizeof(float) + s.batch.labels.size() * sizeof(s.batch.labels[0]));
    return bytes;
  }
  double wait_ms() const {
    std::lock_guard lock(mu_);
    return wait_ms_;
  }
  // Samples left out of the batches delivered so far because their file failed to decode
  // (skip_bad), and the files.
  std::int64_t skipped() const {
    std::lock_guard lock(mu_);
    return skipped_;
  }
  std::vector<std::string> failed_files() const {
    std::lock_guard lock(mu_);
    return {failed_.begin(), failed_.end()};
  }

 private:
  struct Slot {
    enum State { free, filling, ready } state = free;
    std::uint64_t generation = 0;
    std::int64_t skipped = 0;  // samples of the batch whose file failed to decode
    Batch batch;
    std::exception_ptr error;
  };
  // A worker's own buffers, allocated once.
  struct WorkerState {
    std::vector<std::int64_t> indices;
    std::vector<float> scratch;
    std::uint64_t epoch = 0;
  };

  Slot& slot(std::int64_t b) { return slots_[static_cast<std::size_t>(b % std::int64_t(slots_.size()))]; }

  const Batch& finish_get(Slot& s, const Stopwatch& sw) {
    wait_ms_ += sw.elapsed_ms();
    if (s.error) std::rethrow_exception(s.error);
    return s.batch;
  }

  void release_held_locked() {
    if (held_ < 0) return;
    Slot& s = slot(held_);
    if (s.state == Slot::ready) s.state = Slot::free;
    held_ = -1;
    work_cv_.notify_all();
  }

  // Drops every prefetched batch and continues from batch `b`.
  void restart_locked(std::int64_t b) {
    ++generation_;
    for (auto& s : slots_)
      if (s.state == Slot::ready) s.state = Slot::free;
    held_ = -1;
    next_fill_ = next_get_ = b;
    work_cv_.notify_all();
  }

  // Claims slot `s` for batch `b`: copies its sample indices under the lock.
  void assign_locked(std::int64_t b, Slot& s, WorkerState& w) {
    s.state = Slot::filling;
    s.generation = generation_;
    s.batch.index = b;
    s.error = nullptr;
    s.skipped = 0;
    const std::int64_t first = b * o_.batch;
    s.batch.count = std::min(o_.batch, size() - first);
    w.indices.assign(order_.begin() + first, order_.begin() + first + s.batch.count);
    w.epoch = epoch_;
  }

  void work() {
    WorkerState w;
    w.indices.reserve(static_cast<std::size_t>(o_.batch));
    std::unique_lock lock(mu_);
    for (;;) {
      work_cv_.wait(lock, [&] { return stop_ || (next_fill_ < total_ && slot(next_fill_).state == Slot::free); });
      if (stop_) return;
      Slot& s = slot(next_fill_);
      assign_locked(next_fill_++, s, w);
      const std::uint64_t generation = s.generation;
      lock.unlock();
      fill(s, w);
      lock.lock();
      s.state = generation == generation_ ? Slot::ready : Slot::free;
      ready_cv_.notify_all();
      work_cv_.notify_all();
    }
  }

  // Decodes and transforms the samples of slot `s` (outside the lock).
  void fill(Slot& s, WorkerState& w) {
    Batch& batch = s.batch;
    const std::int64_t pixels = o_.height * o_.width * 3;
    try {
      for (std::int64_t i = 0; i < o_.batch; ++i) {
        float* out = batch.images.data() + i * pixels;
        batch.labels[static_cast<std::size_t>(i)] = SoftmaxCrossEntropy::kIgnore;
        if (i >= batch.count) {
          std::fill(out, out + pixels, 0.0f);
          continue;
        }
        const std::int64_t sample = w.indices[static_cast<std::size_t>(i)];
        Image img;
        try {
          img = split_.image(sample);
        } catch (const DecodeError& e) {
          if (!o_.skip_bad) throw;
          std::fill(out, out + pixels, 0.0f);
          ++s.skipped;
          std::lock_guard lock(mu_);
          if (failed_.insert(split_.name(sample)).second && warn) warn(fmt::format("skipping {}", e.what()));
          continue;
        }
        Augmentation a;
        if (o_.augment) {
          Rng rng(mix64(o_.seed ^ mix64(w.epoch ^ mix64(static_cast<std::uint64_t>(batch.index * o_.batch + i)))));
          a = draw_augmentation(rng);
        }
        transform_image(img, o_.height, o_.width, o_.augment ? &a : nullptr, o_.normalize, out, w.scratch);
        batch.labels[static_cast<std::size_t>(i)] = split_.labels[static_cast<std::size_t>(sample)];
      }
    } catch (...) {
      s.error = std::current_exception();
    }
  }

  const Split& split_;
  LoaderOptions o_;
  std::vector<std::int64_t> order_;
  std::vector<Slot> slots_;
  WorkerState sync_worker_;
  std::vector<std::thread> threads_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_, ready_cv_;
  bool stop_ = false;
  std::uint64_t epoch_ = 0, generation_ = 0;
  std::int64_t total_ = 0, next_fill_ = 0, next_get_ = 0, held_ = -1;
  double wait_ms_ = 0;
  std::int64_t skipped_ = 0;
  std::set<std::string> failed_;
};

// A loader as a trainer's batch source with at most `cap` batches an epoch
// (e.g. --steps_per_epoch, or short epochs that re-select often).
struct CappedLoader {
  Loader& loader;
  std::int64_t cap;
  void start_epoch(std::uint64_t epoch, bool shuffle) { loader.start_epoch(epoch, shuffle); }
  std::int64_t batches(std::int64_t batch, bool drop_last) const {
    return std::min(cap, loader.batches(batch, drop_last));
  }
  std::int64_t load(Model& m, std::int64_t b) { return loader.load(m, b); }
  double wait_ms() const { return loader.wait_ms(); }
  std::int64_t memory_bytes() const { return loader.memory_bytes(); }
};

// Inference over every batch of `loader` in order, whose batch must be the
// model's: f(batch, logits) for each, with the batch as loaded and the
// model's logits (B, classes) on it, in inference mode.
template <class F>
void infer(Model& m, Loader& loader, F&& f) {
  if (loader.batch_size() != m.batch())
    fail("inference: the loader's batch {} is not the model's {}", loader.batch_size(), m.batch());
  loader.check_model(m);
  const std::int64_t floats = m.batch() * m.input_shape[2] * m.input_shape[3] * 3;
  loader.start_epoch(0, false);
  for (std::int64_t b = 0; b < loader.batches(); ++b) {
    const Batch& batch = loader.get(b);
    std::memcpy(m.graph->value_data(m.images), batch.images.data(), std::size_t(floats) * sizeof(float));
    m.loss_node().set_labels(batch.labels);
    m.graph->forward(false);
    f(batch, m.graph->read(m.logits));
  }
}

// Loss and accuracy of the model on a whole split, in inference mode. The
// loader's batch may be any multiple of the model's (the test loader uses
// twice the training batch); each loader batch runs as model-sized chunks.
inline Metrics evaluate(Model& m, Loader& loader) {
  const std::int64_t B = m.batch();
  if (loader.batch_size() % B != 0)
    fail("evaluation: the loader's batch {} is not a multiple of the model's {}", loader.batch_size(), B);
  loader.check_model(m);
  Metrics metrics;
  loader.start_epoch(0, false);
  const std::int64_t per = loader.batch_size() / B;
  const std::int64_t floats = B * m.input_shape[2] * m.input_shape[3] * 3;
  for (std::int64_t b = 0; b < loader.batches(); ++b) {
    const Batch& batch = loader.get(b);
    for (std::int64_t c = 0; c < per && c * B < batch.count; ++c) {
      std::memcpy(m.graph->value_data(m.images), batch.images.data() + c * floats, std::size_t(floats) * sizeof(float));
      m.loss_node().set_labels(std::span<const std::int32_t>(batch.labels).subspan(std::size_t(c * B), std::size_t(B)));
      m.graph->forward(false);
      auto& loss = m.loss_node();
      if (loss.count() > 0) metrics.add(loss.loss(), loss.correct(), loss.count());
    }
  }
  return metrics;
}

}  // namespace elastic::data
