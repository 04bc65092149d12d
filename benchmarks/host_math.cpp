// The host-side elementwise updates as the library runs them (Eigen array
// expressions on per-thread chunks, core/host_math.hpp, through the
// optimizers' apply) against the same arithmetic as plain OpenMP simd loops,
// the form they had before; and the data pipeline's per-pixel normalization
// (data::normalize, a loop) against the same in xtensor, broadcast over the
// channel axis and as per-channel views; bf16 gradient accumulation as Eigen
// casts and as host::accumulate; the SGDW update right after a oneDNN fp32 and
// bf16 weight-gradient kernel, as the plain loop and as the library runs it. Alternating
// repeats; medians in microseconds.
//   host_math [threads] [repeats]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <omp.h>

#include <fmt/format.h>
#include <xtensor/xadapt.hpp>
#include <xtensor/xfixed.hpp>
#include <xtensor/xnoalias.hpp>
#include <xtensor/xview.hpp>

#include "elastic/core/context.hpp"
#include "elastic/core/precision.hpp"
#include "elastic/core/timer.hpp"
#include "elastic/data/transforms.hpp"
#include "elastic/optim/optimizer.hpp"

using namespace elastic;

namespace {
void sgdw_loop(float* __restrict w, const float* __restrict g, float* __restrict v, std::int64_t n, float lr) {
  const float m = 0.9f, wd = 5e-4f * lr;
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (std::int64_t i = 0; i < n; ++i) {
    v[i] = m * v[i] - lr * g[i];
    w[i] = w[i] - wd * w[i] + v[i];
  }
}

void accumulate_loop(float* __restrict acc, const float* __restrict add, std::int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (std::int64_t i = 0; i < n; ++i) acc[i] += add[i];
}

// acc[i] += add[i] on bf16 through Eigen's casts, the form host::accumulate had before.
void accumulate_bf16_cast(host::bf16* acc, const host::bf16* add, std::int64_t n) {
  using Map = Eigen::Map<Eigen::Array<host::bf16, Eigen::Dynamic, 1>>;
  using ConstMap = Eigen::Map<const Eigen::Array<host::bf16, Eigen::Dynamic, 1>>;
  host::for_chunks(n, [&](std::int64_t b, std::int64_t c) {
    Map a(acc + b, static_cast<Eigen::Index>(c));
    a = (a.cast<float>() + ConstMap(add + b, static_cast<Eigen::Index>(c)).cast<float>()).cast<host::bf16>();
  });
}

// (pixels, 3) in place: x * scale[c] + shift[c], as xtensor broadcasting writes it.
void normalize_broadcast(float* data, std::int64_t pixels, const float* scale, const float* shift) {
  auto a =
      xt::adapt(data, std::size_t(pixels * 3), xt::no_ownership(), std::array<std::size_t, 2>{std::size_t(pixels), 3});
  const xt::xtensor_fixed<float, xt::xshape<3>> s = {scale[0], scale[1], scale[2]}, h = {shift[0], shift[1], shift[2]};
  xt::noalias(a) = a * s + h;
}
// The same through one strided view per channel.
void normalize_views(float* data, std::int64_t pixels, const float* scale, const float* shift) {
  auto a =
      xt::adapt(data, std::size_t(pixels * 3), xt::no_ownership(), std::array<std::size_t, 2>{std::size_t(pixels), 3});
  for (int c = 0; c < 3; ++c) {
    auto v = xt::view(a, xt::all(), c);
    v = v * scale[c] + shift[c];
  }
}

void adam_loop(float* __restrict w, const float* __restrict g, float* __restrict m, float* __restrict v, std::int64_t n,
               float lr_t) {
  const float b1 = 0.9f, b2 = 0.999f, eps = 1e-7f, wd = 0;
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (std::int64_t i = 0; i < n; ++i) {
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    w[i] = w[i] - wd * w[i] - lr_t * m[i] / (std::sqrt(v[i]) + eps);
  }
}
}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2, repeats = argc > 2 ? std::atoi(argv[2]) : 41;
  omp_set_num_threads(threads);
  const SGDW sgdw_opt;
  const Adam adam_opt;
  const Optimizer &sgdw = sgdw_opt, &adam = adam_opt;  // apply() is public on the base
  fmt::print("{} threads, {} alternating repeats, median us\n", threads, repeats);
  fmt::print("{:>10} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}\n", "elements", "sgdw loop", "sgdw eigen", "adam loop",
             "adam eigen", "acc loop", "acc eigen");
  // A small conv's weights, a mid-size layer, ResNet50's fc (2048x1000), a ViT MLP weight (3072x768).
  for (const std::int64_t n :
       {std::int64_t{4608}, std::int64_t{262144}, std::int64_t{2048000}, std::int64_t{2359296}}) {
    std::vector<float> w(std::size_t(n), 0.5f), g(w.size(), 1e-3f), s1(w.size(), 0.0f), s2(w.size(), 0.0f);
    float* slots[2] = {s1.data(), s2.data()};
    std::vector<double> a, b, c, d, e, f;
    for (int r = 0; r < repeats; ++r) {
      Stopwatch sw;
      sgdw_loop(w.data(), g.data(), s1.data(), n, 1e-4f);
      a.push_back(sw.elapsed_ms() * 1000);
      sw.reset();
      sgdw.apply(w.data(), g.data(), std::span<float* const>(slots, 1), n, 1e-4f, 1);
      b.push_back(sw.elapsed_ms() * 1000);
      sw.reset();
      adam_loop(w.data(), g.data(), s1.data(), s2.data(), n, 1e-4f);
      c.push_back(sw.elapsed_ms() * 1000);
      sw.reset();
      adam.apply(w.data(), g.data(), std::span<float* const>(slots, 2), n, 1e-4f, 1);
      d.push_back(sw.elapsed_ms() * 1000);
      sw.reset();
      accumulate_loop(s1.data(), g.data(), n);
      e.push_back(sw.elapsed_ms() * 1000);
      sw.reset();
      host::accumulate(s1.data(), g.data(), n);
      f.push_back(sw.elapsed_ms() * 1000);
    }
    fmt::print("{:>10} {:>12.1f} {:>12.1f} {:>12.1f} {:>12.1f} {:>12.1f} {:>12.1f}\n", n, summarize(a).median,
               summarize(b).median, summarize(c).median, summarize(d).median, summarize(e).median, summarize(f).median);
  }

  // bf16 gradient accumulation (a bf16 graph's branch points), on activation sizes of
  // ResNet50 at batch 4: the previous Eigen-cast form against host::accumulate.
  for (const std::int64_t n : {std::int64_t{4 * 64 * 56 * 56}, std::int64_t{4 * 256 * 56 * 56}}) {
    std::vector<host::bf16> x(static_cast<std::size_t>(n)), y = x, add = x;
    for (std::int64_t i = 0; i < n; ++i) {
      x[std::size_t(i)] = y[std::size_t(i)] = host::bf16(float(i % 97) * 0.01f);
      add[std::size_t(i)] = host::bf16(float(i % 89) * -0.003f);
    }
    std::vector<double> a, b;
    for (int r = 0; r < repeats; ++r) {
      Stopwatch sw;
      accumulate_bf16_cast(x.data(), add.data(), n);
      a.push_back(sw.elapsed_ms() * 1000);
      sw.reset();
      host::accumulate(y.data(), add.data(), n);
      b.push_back(sw.elapsed_ms() * 1000);
    }
    bool same = true;
    for (std::int64_t i = 0; i < n; ++i)
      same = same && Eigen::numext::bit_cast<std::uint16_t>(x[std::size_t(i)]) ==
                         Eigen::numext::bit_cast<std::uint16_t>(y[std::size_t(i)]);
    fmt::print("bf16 accumulate, {} elements, median us: Eigen casts {:.1f}, host::accumulate {:.1f}; same bits: {}\n",
               n, summarize(a).median, summarize(b).median, same);
  }

  // The update right after a oneDNN kernel, as in a training step: the plain loop, compiled
  // for the build's ISA (SSE2 unless -march says more), against the optimizer's apply
  // (host::for_chunks: the AVX-512 copy where the CPU has it), each after the kernel a
  // Linear node's update follows (inner product backward_weights, bias included) in fp32
  // and in bf16 (whose gemm leaves the vector registers' upper halves dirty). One ViT MLP
  // weight.
  {
    using namespace dnnl;
    Context ctx(threads);
    const std::int64_t n = 2359296;
    std::vector<float> w(std::size_t(n), 0.5f), g(w.size(), 1e-3f), v(w.size(), 0.0f);
    float* slots[1] = {v.data()};
    for (const auto type : {memory::data_type::f32, memory::data_type::bf16}) {
      if (type == memory::data_type::bf16 && !precision_supported(Precision::bf16)) continue;
      const memory::dim rows = 788, in = 768, out = 3072;  // that weight's own gradient
      const memory::desc x({rows, in}, type, memory::format_tag::ab), dy({rows, out}, type, memory::format_tag::ab),
          dw({out, in}, memory::data_type::f32, memory::format_tag::ab);
      const inner_product_forward::primitive_desc hint(
          {prop_kind::forward_training, x, memory::desc({out, in}, type, memory::format_tag::ab), dy}, ctx.engine());
      const memory::desc db({out}, memory::data_type::f32, memory::format_tag::a);
      const inner_product_backward_weights::primitive_desc pd({x, dw, db, dy}, ctx.engine(), hint);
      std::vector<float> xb(std::size_t(rows * in), 0.0f), dyb(std::size_t(rows * out), 0.0f),
          dwb(std::size_t(out * in)), dbb(std::size_t(out), 0.0f);
      memory mx(x, ctx.engine(), xb.data()), mdy(dy, ctx.engine(), dyb.data()), mdw(dw, ctx.engine(), dwb.data()),
          mdb(db, ctx.engine(), dbb.data());
      const inner_product_backward_weights ip(pd);
      const auto kernel = [&] {
        ip.execute(
            ctx.stream(),
            {{DNNL_ARG_SRC, mx}, {DNNL_ARG_DIFF_DST, mdy}, {DNNL_ARG_DIFF_WEIGHTS, mdw}, {DNNL_ARG_DIFF_BIAS, mdb}});
        ctx.stream().wait();
      };
      std::vector<double> a, b;
      for (int r = 0; r < repeats; ++r) {
        kernel();
        Stopwatch sw;
        sgdw_loop(w.data(), g.data(), v.data(), n, 1e-4f);
        a.push_back(sw.elapsed_ms() * 1000);
        kernel();
        sw.reset();
        sgdw.apply(w.data(), g.data(), std::span<float* const>(slots, 1), n, 1e-4f, 1);
        b.push_back(sw.elapsed_ms() * 1000);
      }
      fmt::print("sgdw, {} elements, after a {} weight-gradient kernel ({}), median us: loop {:.1f}, apply {:.1f}\n", n,
                 type == memory::data_type::bf16 ? "bf16" : "fp32", pd.impl_info_str(), summarize(a).median,
                 summarize(b).median);
    }
  }

  // One 224x224 RGB image, ImageNet's statistics.
  const std::int64_t pixels = 224 * 224;
  const data::Normalize norm{{0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}};
  float scale[3], shift[3];
  for (int c = 0; c < 3; ++c) {
    scale[c] = 1.0f / (255.0f * norm.stddev[c]);
    shift[c] = -norm.mean[c] / norm.stddev[c];
  }
  std::vector<float> x(std::size_t(pixels * 3), 128.0f), y = x, z = x;
  std::vector<double> a, b, c;
  for (int r = 0; r < repeats; ++r) {
    Stopwatch sw;
    data::normalize(x.data(), pixels, norm);
    a.push_back(sw.elapsed_ms() * 1000);
    sw.reset();
    normalize_broadcast(y.data(), pixels, scale, shift);
    b.push_back(sw.elapsed_ms() * 1000);
    sw.reset();
    normalize_views(z.data(), pixels, scale, shift);
    c.push_back(sw.elapsed_ms() * 1000);
  }
  fmt::print(
      "normalize 224x224x3, median us: loop {:.1f}, xtensor broadcast {:.1f}, xtensor views {:.1f}; same "
      "results: {}\n",
      summarize(a).median, summarize(b).median, summarize(c).median, x == y && x == z);
}
