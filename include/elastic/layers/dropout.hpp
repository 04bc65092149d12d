// Dropout as torch.nn.Dropout: in training, zeroes each element with
// probability p and scales the rest by 1/(1-p); identity in inference. The mask
// is a hash of (seed, step, element index), so backward recomputes it instead of
// storing it, and it does not depend on the thread count.
#pragma once

#include "elastic/core/random.hpp"
#include "elastic/graph/node.hpp"

namespace elastic {

class Dropout final : public Node {
 public:
  Dropout(std::string name, float p, std::uint64_t seed = 0) : Node(std::move(name)), p_(p), seed_(seed) {
    if (!(p >= 0.0f && p < 1.0f)) fail("layer '{}' (dropout): p must be in [0, 1), got {}", this->name(), p);
  }

  std::string_view type() const override { return "dropout"; }
  float p() const { return p_; }

  void setup(std::span<const dnnl::memory::desc> in, Context&, ParamStore&) override {
    expect(in.size() == 1, "expects one input");
    set_output(in[0]);
    count_ = static_cast<std::int64_t>(in[0].get_size() / dnnl::memory::data_type_size(in[0].data_type()));
  }

  void forward(const RunCtx& run) override { apply(src(), dst(), run); }
  void backward_data(const RunCtx& run) override {
    if (has_diff_src()) apply(diff_dst(), diff_src(), run);
  }

  // Whether element i is kept at `step` (exposed for tests).
  bool keeps(std::uint64_t step, std::int64_t i) const {
    return to_unit_float(mix64(key(step) ^ static_cast<std::uint64_t>(i))) >= p_;
  }

 private:
  std::uint64_t key(std::uint64_t step) const { return mix64(mix64(seed_) ^ step); }

  // out = in * mask / (1 - p) in training, a copy otherwise (on f32 or bf16
  // values; the element index is the logical one in both).
  void apply(const dnnl::memory& from, const dnnl::memory& to, const RunCtx& run) const {
    with_element(from.get_desc().data_type(), [&]<class T>(std::type_identity<T>) {
      const T* in = ptr_as<T>(from);
      T* out = ptr_as<T>(to);
      const bool active = run.training && p_ > 0.0f;
      const float scale = 1.0f / (1.0f - p_);
      const std::uint64_t k = key(run.step);
      const float p = p_;
      const std::int64_t count = count_;
#pragma omp parallel for simd schedule(static)
      for (std::int64_t i = 0; i < count; ++i) {
        const bool keep = !active || to_unit_float(mix64(k ^ static_cast<std::uint64_t>(i))) >= p;
        out[i] = keep ? (active ? T(static_cast<float>(in[i]) * scale) : in[i]) : T(0.0f);
      }
    });
  }

  float p_;
  std::uint64_t seed_;
  std::int64_t count_ = 0;
};

}  // namespace elastic
