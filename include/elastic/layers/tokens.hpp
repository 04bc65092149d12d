// Token plumbing of a vision transformer: patch-embedding maps to token rows,
// the class token and position embedding, and picking the class token out.
// Plain copies and sums over contiguous rows (no oneDNN primitive fits better),
// on f32 or bf16 values (the input's type; params and their gradients fp32).
#pragma once

#include <algorithm>
#include <cstring>

#include "elastic/graph/node.hpp"

namespace elastic {

namespace detail {
// Copies `bytes` bytes in parallel blocks.
inline void parallel_copy(void* __restrict dst, const void* __restrict src, std::int64_t bytes) {
  constexpr std::int64_t kChunk = 1 << 16;
  const std::int64_t chunks = (bytes + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (std::int64_t c = 0; c < chunks; ++c)
    std::memcpy(static_cast<char*>(dst) + c * kChunk, static_cast<const char*>(src) + c * kChunk,
                static_cast<std::size_t>(std::min(kChunk, bytes - c * kChunk)));
}
}  // namespace detail

// (N, C, H, W) in channels-last memory -> (N, H*W, C) tokens, as torchvision's
// x.reshape(n, c, h * w).permute(0, 2, 1). Channels-last already stores exactly
// those rows, so both directions are copies.
class PatchTokens final : public Node {
 public:
  explicit PatchTokens(std::string name) : Node(std::move(name)) {}
  std::string_view type() const override { return "patch_tokens"; }

  void setup(std::span<const dnnl::memory::desc> in, Context&, ParamStore&) override {
    expect(in.size() == 1 && in[0].dims().size() == 4, "expects one (N, C, H, W) input");
    const auto d = in[0].dims();
    const auto dt = in[0].data_type();
    expect(in[0] == activation_desc(d, dt), "expects a channels-last input");
    set_output(activation_desc({d[0], d[2] * d[3], d[1]}, dt));
    bytes_ = static_cast<std::int64_t>(in[0].get_size());
  }
  void forward(const RunCtx&) override { detail::parallel_copy(ptr(dst()), ptr(src()), bytes_); }
  void backward_data(const RunCtx&) override {
    if (has_diff_src()) detail::parallel_copy(ptr(diff_src()), ptr(diff_dst()), bytes_);
  }

 private:
  std::int64_t bytes_ = 0;
};

// (N, H*W, C) tokens -> (N, C, H, W) in channels-last memory: PatchTokens'
// inverse (torch's permute(0, 3, 1, 2) of an (N, H, W, C) tensor, ConvNeXt's
// return from its channels-last blocks). Both directions are copies.
class TokenImage final : public Node {
 public:
  TokenImage(std::string name, std::int64_t height, std::int64_t width)
      : Node(std::move(name)), height_(height), width_(width) {}
  std::string_view type() const override { return "token_image"; }

  void setup(std::span<const dnnl::memory::desc> in, Context&, ParamStore&) override {
    expect(in.size() == 1 && in[0].dims().size() == 3, "expects one (N, T, C) input");
    const auto d = in[0].dims();
    expect(d[1] == height_ * width_, fmt::format("{} tokens are not a {}x{} image", d[1], height_, width_));
    const auto dt = in[0].data_type();
    set_output(activation_desc({d[0], d[2], height_, width_}, dt));
    bytes_ = static_cast<std::int64_t>(in[0].get_size());
  }
  void forward(const RunCtx&) override { detail::parallel_copy(ptr(dst()), ptr(src()), bytes_); }
  void backward_data(const RunCtx&) override {
    if (has_diff_src()) detail::parallel_copy(ptr(diff_src()), ptr(diff_dst()), bytes_);
  }

 private:
  std::int64_t height_, width_;
  std::int64_t bytes_ = 0;
};

// (N, T, E) -> (N, T+1, E): prepends the class token and adds the position
// embedding. Params: `class_token` (1, 1, E) and `encoder.pos_embedding`
// (1, T+1, E), torchvision's top-level names.
class ClassTokenPosEmbed final : public Node {
 public:
  ClassTokenPosEmbed(std::string name, std::int64_t embed_dim, std::int64_t tokens)
      : Node(std::move(name)), e_(embed_dim), t_(tokens) {}
  std::string_view type() const override { return "class_token_pos_embed"; }

  void declare(ParamStore& store) override {
    cls_ = add_param_named(store, "class_token", {1, 1, e_}, ParamRole::other, Init::zero());
    pos_ = add_param_named(store, "encoder.pos_embedding", {1, t_ + 1, e_}, ParamRole::other, Init::gaussian(0.02f));
  }

  void setup(std::span<const dnnl::memory::desc> in, Context&, ParamStore& store) override {
    const auto d = in[0].dims();
    expect(in.size() == 1 && d.size() == 3 && d[1] == t_ && d[2] == e_,
           fmt::format("expects input (N, {}, {}), got {}", t_, e_, to_string(d)));
    n_ = d[0];
    type_ = in[0].data_type();
    set_output(activation_desc({n_, t_ + 1, e_}, type_));
    cls_v_ = store[cls_].value;
    pos_v_ = store[pos_].value;
  }

  void forward(const RunCtx&) override {
    with_element(type_, [&]<class T>(std::type_identity<T>) {
      const T* x = ptr_as<T>(src());
      T* y = ptr_as<T>(dst());
      const std::int64_t row = (t_ + 1) * e_;
#pragma omp parallel for schedule(static)
      for (std::int64_t n = 0; n < n_; ++n) {
        T* yn = y + n * row;
        const T* xn = x + n * t_ * e_;
        for (std::int64_t j = 0; j < e_; ++j) yn[j] = T(cls_v_[j] + pos_v_[j]);
        for (std::int64_t j = 0; j < t_ * e_; ++j) yn[e_ + j] = T(static_cast<float>(xn[j]) + pos_v_[e_ + j]);
      }
    });
  }

  void backward_data(const RunCtx&) override {
    if (!has_diff_src()) return;
    const auto* dy = static_cast<const char*>(diff_dst().get_data_handle());
    auto* dx = static_cast<char*>(diff_src().get_data_handle());
    const auto size = static_cast<std::int64_t>(dnnl::memory::data_type_size(type_));
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < n_; ++n)
      std::memcpy(dx + n * t_ * e_ * size, dy + (n * (t_ + 1) * e_ + e_) * size,
                  static_cast<std::size_t>(t_ * e_ * size));
  }

  // Both params are sums of the output gradient over the batch.
  void backward_weights(const RunCtx&) override {
    with_element(type_, [&]<class T>(std::type_identity<T>) {
      const T* dy = ptr_as<T>(diff_dst());
      const std::int64_t row = (t_ + 1) * e_;
#pragma omp parallel for schedule(static)
      for (std::int64_t j = 0; j < row; ++j) {
        float s = 0;
        for (std::int64_t n = 0; n < n_; ++n) s += static_cast<float>(dy[n * row + j]);
        pos_g_[j] = s;
        if (j < e_) cls_g_[j] = s;
      }
    });
  }

 protected:
  void on_bind() override {
    cls_g_ = grad_of(cls_);
    pos_g_ = grad_of(pos_);
  }

 private:
  std::int64_t e_, t_, n_ = 0;
  DataType type_ = DataType::f32;
  int cls_ = -1, pos_ = -1;
  float *cls_v_ = nullptr, *pos_v_ = nullptr, *cls_g_ = nullptr, *pos_g_ = nullptr;
};

// (N, T, E) -> (N, E): token `index` of every sample (ViT's class token).
class SelectToken final : public Node {
 public:
  explicit SelectToken(std::string name, std::int64_t index = 0) : Node(std::move(name)), index_(index) {}
  std::string_view type() const override { return "select_token"; }

  void setup(std::span<const dnnl::memory::desc> in, Context&, ParamStore&) override {
    const auto d = in[0].dims();
    expect(in.size() == 1 && d.size() == 3, fmt::format("expects a (N, T, E) input, got {}", to_string(d)));
    expect(index_ >= 0 && index_ < d[1], fmt::format("token {} is out of range for {} tokens", index_, d[1]));
    n_ = d[0];
    t_ = d[1];
    e_ = d[2];
    size_ = static_cast<std::int64_t>(dnnl::memory::data_type_size(in[0].data_type()));
    set_output(activation_desc({n_, e_}, in[0].data_type()));
  }

  void forward(const RunCtx&) override {
    const auto* x = static_cast<const char*>(src().get_data_handle());
    auto* y = static_cast<char*>(dst().get_data_handle());
    for (std::int64_t n = 0; n < n_; ++n)
      std::memcpy(y + n * e_ * size_, x + (n * t_ + index_) * e_ * size_, static_cast<std::size_t>(e_ * size_));
  }

  void backward_data(const RunCtx&) override {
    if (!has_diff_src()) return;
    auto* dx = static_cast<char*>(diff_src().get_data_handle());
    const auto* dy = static_cast<const char*>(diff_dst().get_data_handle());
    std::memset(dx, 0, static_cast<std::size_t>(n_ * t_ * e_ * size_));
    for (std::int64_t n = 0; n < n_; ++n)
      std::memcpy(dx + (n * t_ + index_) * e_ * size_, dy + n * e_ * size_, static_cast<std::size_t>(e_ * size_));
  }

 private:
  std::int64_t index_, n_ = 0, t_ = 0, e_ = 0, size_ = 4;  // size_: bytes per element
};

}  // namespace elastic
