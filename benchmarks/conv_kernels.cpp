// Times the three passes of a ResNet-style 3x3 convolution (N=4, 64->64, 56x56)
// as the engine runs them (Conv2d node in a graph) and as oneDNN runs them with
// every layout left to the library (its best case), next to oneDNN's matmul rate
// on the same machine. Usage: conv_kernels [threads] [repetitions]
#include <cstdio>
#include <cstdlib>
#include <functional>

#include "elastic/core/timer.hpp"
#include "elastic/graph/graph.hpp"
#include "elastic/layers/conv.hpp"

using namespace elastic;

namespace {

Summary time_ms(int reps, Context& ctx, const std::function<void()>& run) {
  for (int i = 0; i < 3; ++i) run();
  ctx.wait();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    Stopwatch sw;
    run();
    ctx.wait();
    ms.push_back(sw.elapsed_ms());
  }
  return summarize(ms);
}

dnnl::memory filled(const dnnl::memory::desc& md, const dnnl::engine& eng, float value) {
  dnnl::memory m(md, eng);
  auto* p = static_cast<float*>(m.get_data_handle());
  for (std::size_t i = 0; i < md.get_size() / sizeof(float); ++i) p[i] = value * float(i % 17 - 8);
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 30;
  Context ctx(threads);
  const auto& eng = ctx.engine();
  auto& stream = ctx.stream();
  const std::int64_t N = 4, C = 64, K = 64, H = 56, W = 56;
  const double gflop = 2.0 * N * K * C * 9 * H * W * 1e-9;

  // The engine's own path: one Conv2d node, passes called as the trainer calls them.
  Graph g(ctx);
  const auto x = g.input("x", {N, C, H, W}, true);
  const auto y = g.add<Conv2d>(
      {x}, "conv",
      Conv2dOptions{.in_channels = C, .out_channels = K, .kernel_h = 3, .kernel_w = 3, .padding = 1, .bias = false});
  g.finalize(1);
  g.select_all();
  g.forward(true);
  g.backward();
  Summary ours[3] = {time_ms(reps, ctx, [&] { g.forward_node(y, true); }),
                     time_ms(reps, ctx, [&] { g.backward_data_node(y); }),
                     time_ms(reps, ctx, [&] { g.backward_weights_node(y); })};

  // oneDNN alone, every layout `any`: the primitive's best case.
  using namespace dnnl;
  using tag = memory::format_tag;
  const auto f32 = memory::data_type::f32;
  const memory::desc src_any({N, C, H, W}, f32, tag::any), w_any({K, C, 3, 3}, f32, tag::any),
      dst_any({N, K, H, W}, f32, tag::any);
  const memory::dims s{1, 1}, p{1, 1};
  convolution_forward::primitive_desc fwd_pd(
      {prop_kind::forward_training, algorithm::convolution_direct, src_any, w_any, dst_any, s, p, p}, eng);
  convolution_backward_data::primitive_desc bwd_d_pd({algorithm::convolution_direct, src_any, w_any, dst_any, s, p, p},
                                                     eng, fwd_pd);
  convolution_backward_weights::primitive_desc bwd_w_pd(
      {algorithm::convolution_direct, src_any, w_any, dst_any, s, p, p}, eng, fwd_pd);
  auto src = filled(fwd_pd.src_desc(), eng, 0.01f), wei = filled(fwd_pd.weights_desc(), eng, 0.01f),
       dst = filled(fwd_pd.dst_desc(), eng, 0.0f);
  auto diff_dst = filled(bwd_d_pd.diff_dst_desc(), eng, 0.01f), diff_src = filled(bwd_d_pd.diff_src_desc(), eng, 0.f),
       bwd_wei = filled(bwd_d_pd.weights_desc(), eng, 0.01f);
  auto src_w = filled(bwd_w_pd.src_desc(), eng, 0.01f), diff_dst_w = filled(bwd_w_pd.diff_dst_desc(), eng, 0.01f),
       diff_wei = filled(bwd_w_pd.diff_weights_desc(), eng, 0.f);
  convolution_forward fwd(fwd_pd);
  convolution_backward_data bwd_d(bwd_d_pd);
  convolution_backward_weights bwd_w(bwd_w_pd);
  Summary best[3] = {
      time_ms(reps, ctx,
              [&] {
                fwd.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
              }),
      time_ms(reps, ctx,
              [&] {
                bwd_d.execute(
                    stream,
                    {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, bwd_wei}, {DNNL_ARG_DIFF_SRC, diff_src}});
              }),
      time_ms(reps, ctx, [&] {
        bwd_w.execute(stream,
                      {{DNNL_ARG_SRC, src_w}, {DNNL_ARG_DIFF_DST, diff_dst_w}, {DNNL_ARG_DIFF_WEIGHTS, diff_wei}});
      })};

  // oneDNN's matmul (sgemm) on square 1536 matrices: the machine's practical rate.
  const std::int64_t M = 1536;
  matmul::primitive_desc mm_pd(
      {memory::desc({M, M}, f32, tag::ab), memory::desc({M, M}, f32, tag::ab), memory::desc({M, M}, f32, tag::ab)},
      eng);
  auto a = filled(mm_pd.src_desc(), eng, 0.01f), b = filled(mm_pd.weights_desc(), eng, 0.01f),
       c = filled(mm_pd.dst_desc(), eng, 0.f);
  matmul mm(mm_pd);
  const Summary mm_t = time_ms(reps, ctx, [&] {
    mm.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
  });
  const double mm_gflops = 2.0 * M * M * M * 1e-9 / (mm_t.median * 1e-3);

  std::printf("conv 3x3, N=%lld, %lld->%lld channels, %lldx%lld, pad 1: %.3f GFLOP per pass; %d threads, %d reps\n",
              (long long)N, (long long)C, (long long)K, (long long)H, (long long)W, gflop, threads, reps);
  std::printf("%-17s %24s %24s %9s %12s\n", "pass", "elastic ms (min-max)", "oneDNN best ms (min-max)", "elastic",
              "elastic/best");
  const char* names[3] = {"forward", "backward_data", "backward_weights"};
  for (int i = 0; i < 3; ++i)
    std::printf("%-17s %8.3f (%6.3f-%6.3f) %8.3f (%6.3f-%6.3f) %5.0f GF/s %11.0f%%\n", names[i], ours[i].median,
                ours[i].min, ours[i].max, best[i].median, best[i].min, best[i].max, gflop / (ours[i].median * 1e-3),
                100.0 * best[i].median / ours[i].median);
  std::printf("oneDNN matmul %lldx%lldx%lld: %.3f ms, %.0f GFLOP/s\n", (long long)M, (long long)M, (long long)M,
              mm_t.median, mm_gflops);
  std::printf("conv rates as a share of matmul: forward %.0f%%, backward_data %.0f%%, backward_weights %.0f%%\n",
              100.0 * gflop / (ours[0].median * 1e-3) / mm_gflops, 100.0 * gflop / (ours[1].median * 1e-3) / mm_gflops,
              100.0 * gflop / (ours[2].median * 1e-3) / mm_gflops);
  return 0;
}
