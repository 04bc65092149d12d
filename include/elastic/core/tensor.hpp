// Float32 tensors with a shape, owning or viewing memory, and their bridge to
// dnnl::memory. Users see plain row-major tensors (NCHW for images); inside the
// graph, values may live in other oneDNN layouts and are converted on access.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <oneapi/dnnl/dnnl.hpp>

#include "elastic/core/error.hpp"

namespace elastic {

using Shape = dnnl::memory::dims;  // std::vector<int64_t>

inline std::int64_t numel(const Shape& shape) {
  return std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
}

inline std::string to_string(const Shape& shape) { return fmt::format("({})", fmt::join(shape, ", ")); }

// Dense row-major format tag for a rank (a, ab, abc, ...).
inline dnnl::memory::format_tag plain_tag(std::size_t rank) {
  using tag = dnnl::memory::format_tag;
  switch (rank) {
    case 1:
      return tag::a;
    case 2:
      return tag::ab;
    case 3:
      return tag::abc;
    case 4:
      return tag::abcd;
    case 5:
      return tag::abcde;
    case 6:
      return tag::abcdef;
    default:
      fail("tensors of rank {} are not supported (1 to 6)", rank);
  }
}

inline dnnl::memory::desc plain_desc(const Shape& shape, dnnl::memory::data_type type = dnnl::memory::data_type::f32) {
  return {shape, type, plain_tag(shape.size())};
}

// True when `md` is f32 and dense row-major, so its bytes can be viewed as a
// plain tensor of md.dims() without a copy.
inline bool is_plain(const dnnl::memory::desc& md) {
  return md.data_type() == dnnl::memory::data_type::f32 && md == plain_desc(md.dims());
}

// 64-byte aligned float storage (a cache line; what AVX-512 loads like).
inline std::shared_ptr<float[]> aligned_floats(std::int64_t count) {
  const std::size_t bytes = ((static_cast<std::size_t>(count) * sizeof(float) + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  if (!p) fail("out of memory allocating {} bytes", bytes);
  std::memset(p, 0, bytes == 0 ? 64 : bytes);
  return std::shared_ptr<float[]>(static_cast<float*>(p), [](float* q) { std::free(q); });
}

// Zero-filled float storage mapped from the OS: a page takes memory only once
// written (page-aligned, so 64-byte aligned too).
inline std::shared_ptr<float[]> lazy_floats(std::int64_t count) {
  const std::size_t bytes = std::max<std::size_t>(static_cast<std::size_t>(count) * sizeof(float), 64);
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail("out of memory mapping {} bytes: {}", bytes, std::strerror(errno));
  return std::shared_ptr<float[]>(static_cast<float*>(p), [bytes](float* q) { ::munmap(q, bytes); });
}

// Zeros [begin, begin + count) of lazy_floats storage and returns the memory of
// the whole pages inside it to the OS (they read as zero and cost nothing until
// written again); the partial pages at either end are zeroed in place.
inline void release_floats(float* begin, std::int64_t count) {
  if (count <= 0) return;
  static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto lo = reinterpret_cast<std::uintptr_t>(begin);
  const auto hi = lo + static_cast<std::uintptr_t>(count) * sizeof(float);
  const std::uintptr_t first = (lo + page - 1) / page * page, last = hi / page * page;
  if (first >= last) {
    std::fill(begin, begin + count, 0.0f);
    return;
  }
  std::fill(begin, reinterpret_cast<float*>(first), 0.0f);
  std::fill(reinterpret_cast<float*>(last), begin + count, 0.0f);
  if (::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED) != 0)
    std::fill(reinterpret_cast<float*>(first), reinterpret_cast<float*>(last), 0.0f);
}

class Tensor {
 public:
  Tensor() = default;

  // Owning, zero-filled. Copies of a Tensor share storage; use clone() to copy data.
  explicit Tensor(Shape shape) : shape_(std::move(shape)) {
    for (auto d : shape_)
      if (d < 0) fail("tensor shape {} has a negative dimension", to_string(shape_));
    storage_ = aligned_floats(elastic::numel(shape_));
    data_ = storage_.get();
  }

  Tensor(Shape shape, float fill) : Tensor(std::move(shape)) { std::fill_n(data_, numel(), fill); }

  // Non-owning view of `data`, which must outlive the view.
  static Tensor view(float* data, Shape shape) {
    Tensor t;
    t.shape_ = std::move(shape);
    t.data_ = data;
    return t;
  }

  // View of a memory object's buffer; only for plain f32 layouts (no copy).
  static Tensor view(const dnnl::memory& mem) {
    const auto md = mem.get_desc();
    if (!is_plain(md)) fail("cannot view a memory in a blocked layout as a plain tensor; use to_plain");
    return view(static_cast<float*>(mem.get_data_handle()), md.dims());
  }

  Tensor clone() const {
    Tensor t(shape_);
    std::memcpy(t.data_, data_, static_cast<std::size_t>(numel()) * sizeof(float));
    return t;
  }

  // Same data, new shape with the same element count.
  Tensor reshaped(Shape shape) const {
    if (elastic::numel(shape) != numel()) fail("cannot reshape {} to {}", to_string(shape_), to_string(shape));
    Tensor t = *this;
    t.shape_ = std::move(shape);
    return t;
  }

  const Shape& shape() const { return shape_; }
  std::int64_t dim(std::size_t i) const { return shape_.at(i); }
  std::size_t rank() const { return shape_.size(); }
  std::int64_t numel() const { return elastic::numel(shape_); }
  bool empty() const { return data_ == nullptr; }

  float* data() { return data_; }
  const float* data() const { return data_; }
  std::span<float> span() { return {data_, static_cast<std::size_t>(numel())}; }
  std::span<const float> span() const { return {data_, static_cast<std::size_t>(numel())}; }
  float& operator[](std::int64_t i) { return data_[i]; }
  float operator[](std::int64_t i) const { return data_[i]; }

  dnnl::memory::desc desc() const { return plain_desc(shape_); }

  // A memory object over this tensor's buffer (no copy).
  dnnl::memory as_memory(const dnnl::engine& engine) const {
    return dnnl::memory(desc(), engine, const_cast<float*>(data_));
  }

 private:
  Shape shape_;
  std::shared_ptr<float[]> storage_;
  float* data_ = nullptr;
};

// Copies `mem` (any layout) into a new plain tensor, reordering if needed.
inline Tensor to_plain(const dnnl::memory& mem, dnnl::stream& stream) {
  const auto md = mem.get_desc();
  Tensor out(md.dims());
  if (is_plain(md)) {
    std::memcpy(out.data(), mem.get_data_handle(), md.get_size());
  } else {
    auto src = mem;
    auto dst = out.as_memory(mem.get_engine());
    dnnl::reorder(src, dst).execute(stream, src, dst);
    stream.wait();
  }
  return out;
}

// Copies a plain tensor into `mem` (any layout) of the same dims.
inline void from_plain(const Tensor& src, const dnnl::memory& mem, dnnl::stream& stream) {
  const auto md = mem.get_desc();
  if (md.dims() != src.shape())
    fail("cannot write a tensor of shape {} into a value of shape {}", to_string(src.shape()), to_string(md.dims()));
  if (is_plain(md)) {
    std::memcpy(mem.get_data_handle(), src.data(), md.get_size());
  } else {
    auto s = src.as_memory(mem.get_engine());
    auto d = mem;
    dnnl::reorder(s, d).execute(stream, s, d);
    stream.wait();
  }
}

}  // namespace elastic
