// Layout changes of weights on the host, in place of oneDNN's reorder for the
// pairs it is slowest on:
//  - from the plain (O, I, H, W) fp32 layout params keep into the blocked
//    layouts the forward reads, output channels innermost (Acdb32a in fp32,
//    AcdB32a2b in bf16, and their 16-, 48- and 64-channel forms);
//  - for 1 x 1 kernels, into backward_data's layouts (BAcd16a16b in fp32,
//    BAcd8a16b2a in bf16);
//  - from the blocked layouts weight gradients come in (ABcd16b16a, Acdb32a,
//    ...) back to plain;
//  - fp32 to bf16 in the same dense layout (bf16 copies of linear and 1 x 1
//    convolution weights, which their matmuls read in torch's layout).
// On ResNet50's weights oneDNN 2.6 moves 5.5-20 GB/s on these, the host 18-31
// GB/s (benchmarks/RESULTS.md, "Weight layout changes on the host"). The
// bytes are oneDNN's: fp32 values are copied, and bf16 ones converted as
// oneDNN converts them on CPUs with native bf16 (see pack_bf16_pairs).
//
// The work is 16 x 16 transposes: 16 output channels of one row of the plain
// layout are one vector of the blocked layout, for each (input channel, h, w).
// They run in AVX-512 registers, so the host path is taken only on CPUs with
// AVX-512 (others keep oneDNN's reorder), and only for shapes whose channel
// counts are multiples of 16.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <vector>

#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>

#include "elastic/core/host_math.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ELASTIC_HOST_WEIGHT_REORDER 1
#endif

namespace elastic::detail {

// The innermost block of a blocked weight layout this file handles (a for
// output channels, b for input channels, as oneDNN's tags name them).
enum class WeightBlock {
  outputs,       // [ob a][ib b]: ob (a multiple of 16) output channels innermost, ib = 2 in bf16
                 // (pairs of input channels): the forward's Acdb32a, AcdB32a2b, ...
  gradient,      // [16 b][16 a]: weight gradients (ABcd16b16a)
  inputs,        // [16 a][16 b]: 16 input channels innermost, fp32 backward_data (BAcd16a16b)
  output_pairs,  // [8 a][16 b][2 a]: pairs of output channels innermost, bf16 backward_data
                 // (BAcd8a16b2a)
};
// The last two only for 1 x 1 kernels, where a block is 16 runs of the plain
// layout: for larger kernels oneDNN's reorder into them runs at 24-30 GB/s,
// faster than two transposes here (benchmarks/weight_reorders).

// A 4-d weight (O, I, H, W) in a blocked layout with one of those blocks,
// with the plain fp32 layout on the other side of the change.
struct WeightReorderPlan {
  std::int64_t O = 0, I = 0, H = 0, W = 0;
  std::int64_t stride[4] = {};  // of dims 0 and 1 per block, of dims 2 and 3 per element
  WeightBlock block = WeightBlock::outputs;
  std::int64_t ob = 16, ib = 1;  // the block's size in output and input channels
  bool to_blocked = true;        // plain -> blocked (else blocked -> plain)
  bool bf16 = false;             // the blocked side holds bf16

  // Element offset in the blocked layout of output channel o0 (a multiple of
  // 16), input channel i, at (h, w): where its 16 output channels start
  // (`outputs`, `gradient`), or its 16 x 16 block (`inputs`, `output_pairs`:
  // i a multiple of 16 too).
  std::int64_t at(std::int64_t o0, std::int64_t i, std::int64_t h, std::int64_t w) const {
    const std::int64_t inner = block == WeightBlock::outputs    ? (o0 % ob) * ib + i % ib
                               : block == WeightBlock::gradient ? (i % 16) * 16
                                                                : 0;
    return o0 / ob * stride[0] + i / ib * stride[1] + h * stride[2] + w * stride[3] + inner;
  }
};

#ifdef ELASTIC_HOST_WEIGHT_REORDER
inline bool cpu_has_avx512f() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

// out[c][r] = in[r][c] for a 16 x 16 block of floats given by row pointers.
// (GCC 12 warns that the unpack and shuffle intrinsics' unmasked forms read an
// undefined vector, which they do not use.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
__attribute__((target("avx512f"))) inline void transpose16(const float* const* in, float* const* out) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(in[i]);
  // Pairs of rows interleaved, then pairs of pairs: r[4q + j] holds rows
  // 4q..4q+3 of columns j, j + 4, j + 8, j + 12 (one per 128-bit lane).
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int q = 0; q < 4; ++q) {
    const __m512d a = _mm512_castps_pd(t[4 * q]), b = _mm512_castps_pd(t[4 * q + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * q + 2]), d = _mm512_castps_pd(t[4 * q + 3]);
    r[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // Lanes gathered across the four groups of rows.
  for (int j = 0; j < 4; ++j) {
    const __m512 x = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88), y = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);
    const __m512 u = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
    const __m512 v = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
    _mm512_storeu_ps(out[j], _mm512_shuffle_f32x4(x, u, 0x88));
    _mm512_storeu_ps(out[j + 4], _mm512_shuffle_f32x4(y, v, 0x88));
    _mm512_storeu_ps(out[j + 8], _mm512_shuffle_f32x4(x, u, 0xdd));
    _mm512_storeu_ps(out[j + 12], _mm512_shuffle_f32x4(y, v, 0xdd));
  }
}
#pragma GCC diagnostic pop

// v in bf16 as oneDNN's reorder converts it on CPUs with native bf16 (its
// vcvtneps2bf16): a denormal becomes a zero of its sign; anything else is
// host::from_float<bf16>'s rounding to nearest even.
inline std::uint32_t onednn_bf16_bits(float v) {
  const auto u = std::bit_cast<std::uint32_t>(v);
  const std::uint32_t rounded = std::bit_cast<std::uint16_t>(host::from_float<host::bf16>(v));
  return (u & 0x7F800000u) == 0 ? (u >> 16) & 0x8000u : rounded;
}

// out[o] = the bf16 pair (a[o], b[o]) for 16 o, a in the low half.
__attribute__((target("avx512f"))) inline void pack_bf16_pairs(const float* a, const float* b, std::uint32_t* out) {
  for (int o = 0; o < 16; ++o) out[o] = onednn_bf16_bits(a[o]) | onednn_bf16_bits(b[o]) << 16;
}

// The elements of a dense fp32 -> bf16 change that keeps the layout (a bf16
// graph's copies of linear and 1 x 1 convolution weights, in torch's layout):
// n floats in, n bf16 out, element for element. Chunks of 16 KiB floats are
// split over the OpenMP threads; the loop vectorizes (AVX-512).
class HostBf16Conversion {
 public:
  HostBf16Conversion(dnnl::memory from, dnnl::memory to, std::int64_t n)
      : from_(std::move(from)), to_(std::move(to)), n_(n), threads_(std::max(1, omp_get_max_threads())) {}

  void operator()() {
    const auto* src = static_cast<const float*>(from_.get_data_handle());
    auto* dst = static_cast<std::uint16_t*>(to_.get_data_handle());
    const std::int64_t chunks = (n_ + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(threads_) schedule(static) if (n_ > host::kParallelMin)
    for (std::int64_t c = 0; c < chunks; ++c)
      convert(src + c * kChunk, dst + c * kChunk, std::min(kChunk, n_ - c * kChunk));
  }

 private:
  static constexpr std::int64_t kChunk = 16384;
  __attribute__((target("avx512f,avx512bw,avx512vl"))) static void convert(const float* __restrict src,
                                                                           std::uint16_t* __restrict dst,
                                                                           std::int64_t n) {
#pragma omp simd
    for (std::int64_t i = 0; i < n; ++i) dst[i] = static_cast<std::uint16_t>(onednn_bf16_bits(src[i]));
  }

  dnnl::memory from_, to_;
  std::int64_t n_;
  int threads_;
};
#endif

// The element count of a change HostBf16Conversion makes (fp32 to bf16, the
// same dense layout of any rank, on a CPU with AVX-512); 0 for any other pair.
inline std::int64_t bf16_conversion_size(const dnnl::memory::desc& from, const dnnl::memory::desc& to) {
#ifdef ELASTIC_HOST_WEIGHT_REORDER
  const dnnl_memory_desc_t &f = from.data, &t = to.data;
  if (!cpu_has_avx512f() || f.data_type != dnnl_f32 || t.data_type != dnnl_bf16 || f.ndims != t.ndims || f.ndims < 1)
    return 0;
  std::int64_t n = 1;
  for (const auto* m : {&f, &t})
    if (m->format_kind != dnnl_blocked || m->offset0 != 0 || m->extra.flags != 0 ||
        m->format_desc.blocking.inner_nblks != 0)
      return 0;
  for (int d = 0; d < f.ndims; ++d) {
    if (f.dims[d] != t.dims[d] || f.dims[d] <= 0 || f.padded_dims[d] != f.dims[d] || t.padded_dims[d] != t.dims[d] ||
        f.format_desc.blocking.strides[d] != t.format_desc.blocking.strides[d])
      return 0;
    n *= f.dims[d];
  }
  // Dense: the buffers hold exactly the n elements (no gaps between strides).
  return from.get_size() == static_cast<std::size_t>(n) * sizeof(float) ? n : 0;
#else
  (void)from;
  (void)to;
  return 0;
#endif
}

// The plan for changing `from` into `to` on the host, when the pair is one
// this file handles and the CPU has AVX-512; empty otherwise.
inline std::optional<WeightReorderPlan> weight_reorder_plan(const dnnl::memory::desc& from,
                                                            const dnnl::memory::desc& to) {
#ifdef ELASTIC_HOST_WEIGHT_REORDER
  const dnnl_memory_desc_t &f = from.data, &t = to.data;
  if (!cpu_has_avx512f() || f.ndims != 4 || t.ndims != 4) return {};
  for (const auto* m : {&f, &t})
    if (m->format_kind != dnnl_blocked || m->offset0 != 0 || m->extra.flags != 0) return {};
  for (int d = 0; d < 4; ++d)
    if (f.dims[d] != t.dims[d] || f.dims[d] <= 0) return {};
  const std::int64_t O = f.dims[0], I = f.dims[1], H = f.dims[2], W = f.dims[3];
  if (O % 16 != 0 || I % 16 != 0) return {};
  const auto plain = [&](const dnnl_memory_desc_t& m) {
    const auto& b = m.format_desc.blocking;
    if (m.data_type != dnnl_f32 || b.inner_nblks != 0) return false;
    const std::int64_t want[4] = {I * H * W, H * W, W, 1};
    for (int d = 0; d < 4; ++d)
      if (m.padded_dims[d] != m.dims[d] || b.strides[d] != want[d]) return false;
    return true;
  };
  WeightReorderPlan p{.O = O, .I = I, .H = H, .W = W};
  const bool to_blocked = plain(f);
  if (to_blocked == plain(t)) return {};
  const dnnl_memory_desc_t& m = to_blocked ? t : f;
  const auto& b = m.format_desc.blocking;
  p.to_blocked = to_blocked;
  p.bf16 = m.data_type == dnnl_bf16;
  if (m.data_type != dnnl_f32 && !(p.bf16 && to_blocked)) return {};
  const auto inner = [&](std::initializer_list<int> idxs, std::initializer_list<std::int64_t> blks) {
    if (b.inner_nblks != static_cast<int>(idxs.size())) return false;
    for (int k = 0; k < b.inner_nblks; ++k)
      if (b.inner_idxs[k] != idxs.begin()[k] || (blks.begin()[k] != 0 && b.inner_blks[k] != blks.begin()[k]))
        return false;
    return true;
  };
  const bool bf16 = p.bf16, grad = !to_blocked;  // a block size 0 below: any
  if (!bf16 && inner({0}, {0})) {
    p.block = WeightBlock::outputs;
    p.ob = b.inner_blks[0];
  } else if (bf16 && inner({0, 1}, {0, 2})) {
    p.block = WeightBlock::outputs;
    p.ob = b.inner_blks[0];
    p.ib = 2;
  } else if (!bf16 && grad && inner({1, 0}, {16, 16})) {
    p.block = WeightBlock::gradient;
    p.ib = 16;
  } else if (!bf16 && !grad && H * W == 1 && inner({0, 1}, {16, 16})) {
    p.block = WeightBlock::inputs;
    p.ib = 16;
  } else if (bf16 && H * W == 1 && inner({0, 1, 0}, {8, 16, 2})) {
    p.block = WeightBlock::output_pairs;
    p.ib = 16;
  } else {
    return {};
  }
  if (p.ob % 16 != 0 || m.padded_dims[0] != (O + p.ob - 1) / p.ob * p.ob) return {};
  // Padded output channels are written as zeros, so only the plain -> blocked
  // direction may have them.
  if (!to_blocked && m.padded_dims[0] != O) return {};
  for (int d = 1; d < 4; ++d)
    if (m.padded_dims[d] != m.dims[d]) return {};
  for (int d = 0; d < 4; ++d) p.stride[d] = b.strides[d];
  return p;
#else
  (void)from;
  (void)to;
  return {};
#endif
}

// Whether reorder_call changes `from` into `to` on the host.
inline bool host_reorder(const dnnl::memory::desc& from, const dnnl::memory::desc& to) {
  return weight_reorder_plan(from, to).has_value() || bf16_conversion_size(from, to) > 0;
}

#ifdef ELASTIC_HOST_WEIGHT_REORDER
// Runs a WeightReorderPlan between two bound memories (their handles are read
// at each call, so rebinding is seen). Work is split over the OpenMP threads
// in tasks of 16 output x 16 input channels, all (h, w). On the plain side a
// task covers 16 contiguous runs of 16HW values, on the blocked side 16HW
// whole 64-byte vectors (16 blocks of 16 x 16 values for 1 x 1 backward_data
// layouts, copied or paired without a transpose); bf16 pairs of the forward's
// layouts go through a per-thread tile of 16 x 16HW floats.
class HostWeightReorder {
 public:
  HostWeightReorder(dnnl::memory from, dnnl::memory to, const WeightReorderPlan& plan)
      : from_(std::move(from)),
        to_(std::move(to)),
        p_(plan),
        threads_(std::max(1, omp_get_max_threads())),
        tile_floats_(plan.bf16 && plan.block == WeightBlock::outputs ? 256 * plan.H * plan.W : 0),
        tiles_(static_cast<std::size_t>(threads_ * tile_floats_)) {
    // A task's vector k is input channel i0 + k / HW at (h, w) = k % HW; its
    // offset from the task's first is the same for every task (i0 is a
    // multiple of 16, so of the block's input channels).
    for (std::int64_t k = 0; k < 16 * hw(); ++k) {
      const std::int64_t s = k % hw();
      rel_.push_back(p_.at(0, k / hw(), s / p_.W, s % p_.W));
    }
  }

  void operator()() {
    const std::int64_t groups = (p_.to_blocked ? (p_.O + p_.ob - 1) / p_.ob * p_.ob : p_.O) / 16;
    const std::int64_t tasks = groups * (p_.I / 16);
    const bool parallel = p_.O * p_.I * p_.H * p_.W > host::kParallelMin;
#pragma omp parallel num_threads(threads_) if (parallel)
    {
      float* tile = tiles_.data() + omp_get_thread_num() * tile_floats_;
#pragma omp for schedule(static)
      for (std::int64_t task = 0; task < tasks; ++task) {
        const std::int64_t o0 = task / (p_.I / 16) * 16, i0 = task % (p_.I / 16) * 16;
        if (p_.block == WeightBlock::inputs || p_.block == WeightBlock::output_pairs)
          to_blocked_square(o0, i0);
        else if (p_.bf16)
          to_blocked_bf16(o0, i0, tile);
        else
          transpose_f32(o0, i0);
      }
    }
  }

 private:
  std::int64_t hw() const { return p_.H * p_.W; }
  // Row o0 + r of the plain layout from input channel i0 on: 16HW contiguous values.
  std::int64_t plain_at(std::int64_t o0, std::int64_t i0) const { return (o0 * p_.I + i0) * hw(); }
  // Where the task's vector k starts in the blocked layout (k = input channel
  // i - i0, times HW, plus h W + w): the task's first vector, then rel_[k].
  std::int64_t blocked_first(std::int64_t o0, std::int64_t i0) const { return p_.at(o0, i0, 0, 0); }

  // fp32 either way: the task's 16 runs of the plain layout and its 16HW
  // vectors of the blocked one (offsets rel_), transposed 16 x 16 at a time
  // from one side to the other.
  __attribute__((target("avx512f"))) void transpose_f32(std::int64_t o0, std::int64_t i0) {
    float* blocked = static_cast<float*>((p_.to_blocked ? to_ : from_).get_data_handle()) + blocked_first(o0, i0);
    if (o0 >= p_.O) {  // padding (plain -> blocked only): zeros
      for (std::int64_t k = 0; k < 16 * hw(); ++k) std::memset(blocked + rel_[static_cast<std::size_t>(k)], 0, 64);
      return;
    }
    float* plain = static_cast<float*>((p_.to_blocked ? from_ : to_).get_data_handle()) + plain_at(o0, i0);
    const std::int64_t row = p_.I * hw();
    float* rows[16];
    float* vectors[16];
    for (std::int64_t k = 0; k < 16 * hw(); k += 16) {
      for (int r = 0; r < 16; ++r) rows[r] = plain + r * row + k;
      for (int c = 0; c < 16; ++c) vectors[c] = blocked + rel_[static_cast<std::size_t>(k + c)];
      p_.to_blocked ? transpose16(rows, vectors) : transpose16(vectors, rows);
    }
  }

  __attribute__((target("avx512f"))) void to_blocked_bf16(std::int64_t o0, std::int64_t i0, float* tile) {
    auto* dst = static_cast<std::uint16_t*>(to_.get_data_handle()) + blocked_first(o0, i0);
    const bool padding = o0 >= p_.O;  // zeros
    if (!padding) {
      const float* src = static_cast<const float*>(from_.get_data_handle()) + plain_at(o0, i0);
      const std::int64_t row = p_.I * hw();
      const float* in[16];
      float* out[16];
      for (std::int64_t k = 0; k < 16 * hw(); k += 16) {
        for (int r = 0; r < 16; ++r) in[r] = src + r * row + k;
        for (int c = 0; c < 16; ++c) out[c] = tile + (k + c) * 16;
        transpose16(in, out);
      }
    }
    // Input channels 2j and 2j + 1 of one (h, w) make one vector of pairs.
    for (std::int64_t i = 0; i < 16; i += 2) {
      for (std::int64_t s = 0; s < hw(); ++s) {
        const std::int64_t k = i * hw() + s;
        auto* to = reinterpret_cast<std::uint32_t*>(dst + rel_[static_cast<std::size_t>(k)]);
        if (padding)
          std::memset(to, 0, 64);
        else
          pack_bf16_pairs(tile + k * 16, tile + (k + hw()) * 16, to);
      }
    }
  }

  // The backward_data layouts of 1 x 1 kernels: each 16 x 16 block holds 16
  // contiguous runs of the plain layout, copied (fp32) or paired (bf16).
  __attribute__((target("avx512f"))) void to_blocked_square(std::int64_t o0, std::int64_t i0) {
    const float* src = static_cast<const float*>(from_.get_data_handle()) + plain_at(o0, i0);
    const std::int64_t first = blocked_first(o0, i0);
    if (!p_.bf16) {
      float* dst = static_cast<float*>(to_.get_data_handle()) + first;
      for (int o = 0; o < 16; ++o) std::memcpy(dst + 16 * o, src + o * p_.I, 64);
      return;
    }
    auto* words = reinterpret_cast<std::uint32_t*>(static_cast<std::uint16_t*>(to_.get_data_handle()) + first);
    for (int q = 0; q < 8; ++q) pack_bf16_pairs(src + 2 * q * p_.I, src + (2 * q + 1) * p_.I, words + 16 * q);
  }

  dnnl::memory from_, to_;
  WeightReorderPlan p_;
  int threads_;
  std::int64_t tile_floats_;
  std::vector<float> tiles_;
  std::vector<std::int64_t> rel_;  // blocked offset of a task's vector k from its first
};
#endif

}  // namespace elastic::detail
