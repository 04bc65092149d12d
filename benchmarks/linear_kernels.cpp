// Which oneDNN primitive runs each pass of a linear layer fastest, W (out, in)
// in torch's layout, on ViT-B/16's four shapes at batch 4 (788 token rows), or
// with `resnet` on ResNet50's 1x1 convolutions at batch 4, 224x224 (rows N*H*W,
// which the engine runs as these products):
//   forward:          inner product (W as it is) | matmul reading W^T through strides
//   backward_data:    inner product | matmul dY W
//   backward_weights: inner product (bias sums in the kernel) | matmul dY^T X (no bias),
//                     and what would sum the bias gradient beside it: oneDNN's
//                     reduction primitive | the engine's sum_call (a host sum here)
// The two candidates of a pass alternate, `rounds` rounds of 10 runs each; the
// figure is the best median of a round, in ms and GFLOP/s. Linear uses the
// faster of each (include/elastic/layers/linear.hpp).
// With bf16, X, Y and W are bf16 (the weight and bias gradients stay f32), as a
// bf16 graph runs them.
// Usage: linear_kernels [threads] [rounds] [vit|resnet] [fp32|bf16]
#include <algorithm>
#include <cstdlib>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "elastic/core/context.hpp"
#include "elastic/core/timer.hpp"
#include "elastic/graph/node.hpp"

using namespace elastic;

namespace {

double median_ms(Context& ctx, const std::function<void()>& run) {
  std::vector<double> ms;
  for (int i = 0; i < 10; ++i) {
    Stopwatch sw;
    run();
    ctx.wait();
    ms.push_back(sw.elapsed_ms());
  }
  return summarize(ms).median;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dnnl;
  using tag = memory::format_tag;
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2, rounds = argc > 2 ? std::atoi(argv[2]) : 5;
  Context ctx(threads);
  const auto& eng = ctx.engine();
  auto& s = ctx.stream();
  const auto f32 = memory::data_type::f32;
  const bool resnet = argc > 3 && std::string(argv[3]) == "resnet";
  const bool bf16 = argc > 4 && std::string(argv[4]) == "bf16";
  const auto act = bf16 ? memory::data_type::bf16 : f32;
  using Shape3 = std::tuple<memory::dim, memory::dim, memory::dim>;  // rows, in, out
  const std::vector<Shape3> shapes =
      resnet ? std::vector<Shape3>{{12544, 64, 64},  {12544, 64, 256}, {12544, 256, 64},
                                   {3136, 512, 128}, {3136, 128, 512}, {784, 1024, 256},
                                   {784, 256, 1024}, {196, 2048, 512}, {196, 512, 2048}}
             : std::vector<Shape3>{{788, 768, 2304}, {788, 768, 768}, {788, 768, 3072}, {788, 3072, 768}};
  fmt::print("linear passes ({} shapes, {}), {} threads: best median of {} rounds, ms (GFLOP/s)\n",
             resnet ? "ResNet50 1x1 convolution" : "ViT", bf16 ? "bf16" : "fp32", threads, rounds);
  fmt::print("{:>5} {:>5} {:>5}  {:>28} {:>28} {:>28} {:>8}\n", "rows", "in", "out", "forward: ip | matmul",
             "bwd_data: ip | matmul", "bwd_weights: ip | matmul", "bias sum: reduction | host");
  for (const auto& [M, IC, OC] : shapes) {
    const memory::desc X({M, IC}, act, tag::ab), Y({M, OC}, act, tag::ab), W({OC, IC}, act, tag::ab),
        Wt({IC, OC}, act, tag::ba), B({OC}, f32, tag::a), Brow({1, OC}, f32, tag::ab), DYt({OC, M}, act, tag::ba),
        dW({OC, IC}, f32, tag::ab);
    std::vector<float> x(std::size_t(M * IC), 0.01f), y(std::size_t(M * OC), 0.02f), w(std::size_t(OC * IC), 0.03f),
        dw(w.size()), dx(x.size()), b(std::size_t(OC), 0.1f), db(b.size());
    const memory mx(X, eng, x.data()), my(Y, eng, y.data()), mdyt(DYt, eng, y.data()), mw(W, eng, w.data()),
        mwt(Wt, eng, w.data()), mdw(dW, eng, dw.data()), mdx(X, eng, dx.data()), mb(B, eng, b.data()),
        mbrow(Brow, eng, b.data()), mdb(B, eng, db.data()), mdbrow(Brow, eng, db.data());
    const inner_product_forward::primitive_desc hint({prop_kind::forward_training, X, W, B, Y}, eng);
    const inner_product_forward ip_f(hint);
    const inner_product_backward_data ip_d(inner_product_backward_data::primitive_desc({X, W, Y}, eng, hint));
    const inner_product_backward_weights ip_w(inner_product_backward_weights::primitive_desc({X, dW, B, Y}, eng, hint));
    const matmul mm_f(matmul::primitive_desc(matmul::desc(X, Wt, Brow, Y), eng));
    const matmul mm_d(matmul::primitive_desc(matmul::desc(Y, W, X), eng));
    const matmul mm_w(matmul::primitive_desc(matmul::desc(DYt, X, dW), eng));
    const reduction sum_b(
        reduction::primitive_desc(reduction::desc(algorithm::reduction_sum, Y, Brow, 0.0f, 0.0f), eng));
    const Call host_sum = sum_call(my, mdbrow);
    const std::function<void()> runs[8] = {
        [&] {
          ip_f.execute(s, {{DNNL_ARG_SRC, mx}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_BIAS, mb}, {DNNL_ARG_DST, my}});
        },
        [&] {
          mm_f.execute(s, {{DNNL_ARG_SRC, mx}, {DNNL_ARG_WEIGHTS, mwt}, {DNNL_ARG_BIAS, mbrow}, {DNNL_ARG_DST, my}});
        },
        [&] {
          ip_d.execute(s, {{DNNL_ARG_DIFF_DST, my}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DIFF_SRC, mdx}});
        },
        [&] {
          mm_d.execute(s, {{DNNL_ARG_SRC, my}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, mdx}});
        },
        [&] {
          ip_w.execute(
              s,
              {{DNNL_ARG_SRC, mx}, {DNNL_ARG_DIFF_DST, my}, {DNNL_ARG_DIFF_WEIGHTS, mdw}, {DNNL_ARG_DIFF_BIAS, mdb}});
        },
        [&] {
          mm_w.execute(s, {{DNNL_ARG_SRC, mdyt}, {DNNL_ARG_WEIGHTS, mx}, {DNNL_ARG_DST, mdw}});
        },
        [&] {
          sum_b.execute(s, {{DNNL_ARG_SRC, my}, {DNNL_ARG_DST, mdbrow}});
        },
        [&] { host_sum(s); }};
    double best[8];
    std::fill(std::begin(best), std::end(best), 1e30);
    for (int r = 0; r < rounds; ++r)
      for (int k = 0; k < 8; ++k) best[k] = std::min(best[k], median_ms(ctx, runs[k]));
    const double gflop = 2.0 * double(M) * double(IC) * double(OC) * 1e-9;
    const auto cell = [&](int k) {
      return fmt::format("{:6.2f} ({:3.0f}) | {:6.2f} ({:3.0f})", best[k], gflop / best[k] * 1e3, best[k + 1],
                         gflop / best[k + 1] * 1e3);
    };
    fmt::print("{:>5} {:>5} {:>5}  {:>28} {:>28} {:>28} {:>8.2f} | {:5.2f}\n", M, IC, OC, cell(0), cell(2), cell(4),
               best[6], best[7]);
  }
}
