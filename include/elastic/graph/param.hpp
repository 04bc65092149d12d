// Trainable tensors (Params) and non-trainable state (Buffers, e.g. batch-norm
// running statistics). Values live in one contiguous arena and gradients in a
// mirrored one, so optimizers, importance and checkpoints are loops over spans.
// The gradient arena takes memory only where gradients are written: its pages
// come from the OS on first write, and release_grads() hands back those of
// params a selection leaves frozen.
// Params are numbered k = 0..N-1 in the order layers declare them (forward order).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "elastic/core/error.hpp"
#include "elastic/core/random.hpp"
#include "elastic/core/tensor.hpp"

namespace elastic {

// What a param is to its layer; training types select by role.
enum class ParamRole { weight, bias, norm_scale, norm_shift, other };

struct Init {
  enum Kind { zeros, ones, uniform, normal, constant } kind = zeros;
  float scale = 0;  // uniform(-scale, scale), normal(0, scale), or the constant
  static Init zero() { return {zeros, 0}; }
  static Init one() { return {ones, 1}; }
  // PyTorch's default for conv/linear weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  static Init fan_in(std::int64_t fan_in) { return {uniform, 1.0f / std::sqrt(float(fan_in))}; }
  static Init gaussian(float stddev) { return {normal, stddev}; }
  static Init fill(float value) { return {constant, value}; }
};

struct Param {
  std::string name;  // torchvision naming, e.g. "layer1.0.conv1.weight"
  Shape shape;       // torchvision shape, e.g. (out, in, kh, kw)
  ParamRole role = ParamRole::weight;
  Init init;
  std::int64_t offset = 0;  // into the value and gradient arenas, in floats
  int node = -1;            // index of the graph node that owns it
  float* value = nullptr;   // set by ParamStore::allocate
  float* grad = nullptr;

  std::int64_t size() const { return numel(shape); }
  std::span<float> values() const { return {value, static_cast<std::size_t>(size())}; }
  std::span<float> grads() const { return {grad, static_cast<std::size_t>(size())}; }
};

struct Buffer {
  std::string name;  // e.g. "bn1.running_mean"
  Shape shape;
  float fill = 0;
  std::int64_t offset = 0;
  float* value = nullptr;
  std::int64_t size() const { return numel(shape); }
  std::span<float> values() const { return {value, static_cast<std::size_t>(size())}; }
};

class ParamStore {
 public:
  // Declares a param; returns its index k. Names must be unique.
  int add(std::string name, Shape shape, ParamRole role, Init init) {
    check_new_name(name);
    params_.push_back({std::move(name), std::move(shape), role, init});
    return static_cast<int>(params_.size()) - 1;
  }

  int add_buffer(std::string name, Shape shape, float fill) {
    check_new_name(name);
    buffers_.push_back({std::move(name), std::move(shape), fill});
    return static_cast<int>(buffers_.size()) - 1;
  }

  // Lays out both arenas (each tensor 64-byte aligned) and initializes values
  // from each param's Init with a generator seeded by `seed`.
  void allocate(std::uint64_t seed) {
    if (allocated()) fail("params are already allocated");
    std::int64_t total = 0;
    for (auto& p : params_) {
      p.offset = total;
      total += round_up(p.size());
    }
    values_ = aligned_floats(total);
    grads_ = lazy_floats(total);
    arena_size_ = total;
    Rng rng(seed);
    for (auto& p : params_) {
      p.value = values_.get() + p.offset;
      p.grad = grads_.get() + p.offset;
      initialize(p, rng);
    }
    // Streamed layout: each node's params from offset 0 of one shared buffer.
    std::map<int, std::int64_t> node_total;
    stream_offset_.clear();
    stream_size_ = 0;
    for (auto& p : params_) {
      auto& at = node_total[p.node];
      stream_offset_.push_back(at);
      at += round_up(p.size());
      stream_size_ = std::max(stream_size_, at);
    }
    std::int64_t btotal = 0;
    for (auto& b : buffers_) {
      b.offset = btotal;
      btotal += round_up(b.size());
    }
    buffer_size_ = btotal;
    buffer_values_ = aligned_floats(btotal);
    for (auto& b : buffers_) {
      b.value = buffer_values_.get() + b.offset;
      std::fill(b.values().begin(), b.values().end(), b.fill);
    }
  }

  bool allocated() const { return values_ != nullptr; }
  std::size_t size() const { return params_.size(); }
  Param& operator[](std::size_t k) { return params_[k]; }
  const Param& operator[](std::size_t k) const { return params_[k]; }
  std::span<Param> params() { return params_; }
  std::span<const Param> params() const { return params_; }
  std::span<Buffer> buffers() { return buffers_; }
  std::span<const Buffer> buffers() const { return buffers_; }
  Buffer& buffer(std::size_t i) { return buffers_[i]; }

  // Index of the param named `name`, or -1.
  int find(std::string_view name) const {
    for (std::size_t k = 0; k < params_.size(); ++k)
      if (params_[k].name == name) return static_cast<int>(k);
    return -1;
  }
  int find_buffer(std::string_view name) const {
    for (std::size_t i = 0; i < buffers_.size(); ++i)
      if (buffers_[i].name == name) return static_cast<int>(i);
    return -1;
  }

  // Whole arenas, padding included (padding stays zero). The gradient arena
  // holds the kept gradients (see stream_grads).
  std::span<float> value_arena() { return {values_.get(), static_cast<std::size_t>(arena_size_)}; }
  std::span<float> grad_arena() { return {grads_.get(), static_cast<std::size_t>(arena_size_)}; }
  // Bytes of the value arenas (params and buffers, padding included): memory held from allocate() on.
  std::int64_t value_bytes() const { return (arena_size_ + buffer_size_) * std::int64_t(sizeof(float)); }
  // Bytes of the kept gradients of every param (the gradient arena, written in full).
  std::int64_t grad_bytes() const { return arena_size_ * std::int64_t(sizeof(float)); }
  // Bytes of the streamed gradient buffer a node's params use (its stretch of the shared buffer).
  std::int64_t stream_bytes(int node) const {
    std::int64_t n = 0;
    for (const auto& p : params_)
      if (p.node == node) n += round_up(p.size());
    return n * std::int64_t(sizeof(float));
  }
  bool streaming() const { return streaming_; }
  std::int64_t total_elements() const {
    std::int64_t n = 0;
    for (const auto& p : params_) n += p.size();
    return n;
  }

  void zero_grads() {
    release_floats(grads_.get(), arena_size_);
    if (streaming_) release_floats(stream_.get(), stream_size_);
  }

  // Gradients are kept by default: each param has its own place, readable after
  // backward. Streamed, the params of each node share one buffer, as large as
  // the largest node's, with every other node's: for steps that update a
  // node's params as soon as its backward_weights has run (Graph::backward with
  // a callback), so gradients never take the memory of all params at once.
  // Switching either way zeros every gradient and frees the kept ones' memory;
  // the graph must rebind its nodes (Graph::stream_grads does both).
  void stream_grads(bool on) {
    if (!allocated()) fail("stream_grads: params are not allocated");
    if (on && !stream_) stream_ = lazy_floats(stream_size_);
    streaming_ = on;
    release_floats(grads_.get(), arena_size_);
    if (stream_) release_floats(stream_.get(), stream_size_);
    for (std::size_t k = 0; k < params_.size(); ++k)
      params_[k].grad = on ? stream_.get() + stream_offset_[k] : grads_.get() + params_[k].offset;
  }

  // Zeros the kept gradients of every param k without keep[k], returning their memory.
  void release_grads(const std::vector<bool>& keep) {
    if (keep.size() != params_.size()) fail("release_grads: {} flags for {} params", keep.size(), params_.size());
    if (streaming_) return;
    for (std::size_t k = 0; k < params_.size();) {
      if (keep[k]) {
        ++k;
        continue;
      }
      std::size_t end = k + 1;  // a run of frozen params is one stretch of the arena
      while (end < params_.size() && !keep[end]) ++end;
      const std::int64_t last = end < params_.size() ? params_[end].offset : arena_size_;
      release_floats(grads_.get() + params_[k].offset, last - params_[k].offset);
      k = end;
    }
  }

 private:
  static std::int64_t round_up(std::int64_t n) { return (n + 15) / 16 * 16; }

  void check_new_name(const std::string& name) {
    if (allocated()) fail("cannot declare '{}': params are already allocated", name);
    if (!names_.emplace(name, 0).second) fail("duplicate param or buffer name '{}'", name);
  }

  static void initialize(Param& p, Rng& rng) {
    auto v = p.values();
    switch (p.init.kind) {
      case Init::zeros:
        std::fill(v.begin(), v.end(), 0.0f);
        break;
      case Init::ones:
        std::fill(v.begin(), v.end(), 1.0f);
        break;
      case Init::constant:
        std::fill(v.begin(), v.end(), p.init.scale);
        break;
      case Init::uniform:
        for (auto& x : v) x = rng.uniform(-p.init.scale, p.init.scale);
        break;
      case Init::normal:
        for (auto& x : v) x = p.init.scale * rng.normal();
        break;
    }
  }

  std::vector<Param> params_;
  std::vector<Buffer> buffers_;
  std::map<std::string, int, std::less<>> names_;
  std::shared_ptr<float[]> values_, grads_, buffer_values_;
  std::int64_t arena_size_ = 0, buffer_size_ = 0;
  std::shared_ptr<float[]> stream_;          // streamed gradients (stream_grads)
  std::vector<std::int64_t> stream_offset_;  // per param, within its node's stretch of stream_
  std::int64_t stream_size_ = 0;
  bool streaming_ = false;
};

}  // namespace elastic
