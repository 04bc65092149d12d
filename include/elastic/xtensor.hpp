// Zero-copy xtensor views of a Tensor, for code that works with a model's
// outputs on the host (logits, read gradients, inputs being prepared):
// elastic::view(t) is an xtensor adaptor over t's buffer with t's shape
// (row-major), so xtensor's expressions, reductions and sorting apply without
// a copy, and writes through a view of a non-const Tensor change the Tensor.
// The view holds a pointer into the Tensor's buffer: it must not outlive it.
// A separate header (not included by elastic/...): only code that includes it
// compiles xtensor.
#pragma once

#include <cstddef>
#include <vector>

#include <xtensor/xadapt.hpp>

#include "elastic/core/tensor.hpp"

namespace elastic {

namespace detail {
inline std::vector<std::size_t> xt_shape(const Tensor& t) {
  std::vector<std::size_t> s;
  for (const auto d : t.shape()) s.push_back(static_cast<std::size_t>(d));
  return s;
}
}  // namespace detail

inline auto view(Tensor& t) {
  return xt::adapt(t.data(), static_cast<std::size_t>(t.numel()), xt::no_ownership(), detail::xt_shape(t));
}
inline auto view(const Tensor& t) {
  return xt::adapt(t.data(), static_cast<std::size_t>(t.numel()), xt::no_ownership(), detail::xt_shape(t));
}

}  // namespace elastic
