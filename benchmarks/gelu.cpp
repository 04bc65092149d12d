// GELU on ViT-B/16's MLP activations at batch 4 (4 x 197 x 3072 values), fp32
// and bf16: the Eltwise node (one host pass writing gelu(x) and gelu'(x), then
// backward as dy * gelu'(x)) against oneDNN's eltwise gelu_erf, forward_training
// then backward from x, on buffers of the same shape. Each call is timed warm
// (its operands touched just before) and cold (a 64 MiB sweep first, twice the
// L3 of the CPUs measured). The two forms alternate call by call; the figure is
// the median of `repeats` calls, ms.
// Usage: gelu [repeats] [threads]
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include <fmt/format.h>

#include "elastic/core/precision.hpp"
#include "elastic/core/timer.hpp"
#include "elastic/graph/graph.hpp"
#include "elastic/layers/activation.hpp"

using namespace elastic;

namespace {

std::vector<char> sweep_buffer(64 << 20, 1);
void sweep() {
  for (std::size_t i = 0; i < sweep_buffer.size(); i += 64) ++sweep_buffer[i];
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dnnl;
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 41, threads = argc > 2 ? std::atoi(argv[2]) : 2;
  const Shape shape{4, 197, 3072};
  fmt::print("GELU on {} values ({} threads), median of {} calls, ms: the node / oneDNN's eltwise gelu_erf\n",
             numel(shape), threads, repeats);
  fmt::print("{:>5} {:>5}   {:>17} {:>17} {:>17}\n", "prec", "data", "forward", "backward", "both");
  for (const Precision p : {Precision::fp32, Precision::bf16}) {
    if (!precision_supported(p)) continue;
    Context ctx(threads);
    Graph g(ctx, p);
    const ValueId x = g.input("x", shape, true);
    const ValueId y = g.add<Eltwise>({x}, "gelu", Activation::gelu);
    g.finalize();
    Tensor t(shape);
    for (std::int64_t i = 0; i < t.numel(); ++i) t[i] = float(i % 1000) / 125 - 4;
    g.write(x, t);
    g.forward(true);  // the input node's conversion (bf16) done once
    g.write_grad(y, Tensor(shape, 0.5f));
    const auto md = g.node(y).output_desc();
    const auto& eng = ctx.engine();
    memory src(md, eng), dst(md, eng), diff_dst(md, eng), diff_src(md, eng);
    for (const memory* m : {&src, &diff_dst}) std::memset(m->get_data_handle(), 0x3f, md.get_size());
    eltwise_forward::primitive_desc fpd({prop_kind::forward_training, algorithm::eltwise_gelu_erf, md, 0, 0}, eng);
    eltwise_backward::primitive_desc bpd({algorithm::eltwise_gelu_erf, md, md, 0, 0}, eng, fpd);
    eltwise_forward fwd(fpd);
    eltwise_backward bwd(bpd);
    const std::function<void()> node_fwd = [&] { g.forward_node(y, true); };
    const std::function<void()> node_bwd = [&] { g.backward_data_node(y); };
    const std::function<void()> dnnl_fwd = [&] {
      fwd.execute(ctx.stream(), {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}});
      ctx.wait();
    };
    const std::function<void()> dnnl_bwd = [&] {
      bwd.execute(ctx.stream(), {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_SRC, diff_src}});
      ctx.wait();
    };
    for (const bool cold : {false, true}) {
      std::vector<double> ms[4];  // node fwd, node bwd, oneDNN fwd, oneDNN bwd
      const std::function<void()>* calls[4] = {&node_fwd, &node_bwd, &dnnl_fwd, &dnnl_bwd};
      for (int r = 0; r < repeats + 3; ++r)
        for (int k : {0, 2, 1, 3}) {  // forwards before backwards; the two forms alternate
          if (cold)
            sweep();
          else
            (*calls[k])();
          Stopwatch sw;
          (*calls[k])();
          if (r >= 3) ms[k].push_back(sw.elapsed_ms());
        }
      const double m[4] = {summarize(ms[0]).median, summarize(ms[1]).median, summarize(ms[2]).median,
                           summarize(ms[3]).median};
      fmt::print("{:>5} {:>5}   {:>7.3f} / {:<7.3f} {:>7.3f} / {:<7.3f} {:>7.3f} / {:<7.3f}\n", to_string(p),
                 cold ? "cold" : "warm", m[0], m[2], m[1], m[3], m[0] + m[1], m[2] + m[3]);
    }
  }
}
