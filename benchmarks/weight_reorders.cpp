// Weight layout changes as the training step runs them: oneDNN's reorder
// primitive against reorder_call's host path (graph/weight_reorder.hpp), on
// the weight and weight-gradient layouts ResNet50's convolutions ask for in
// fp32 and bf16, and on the bf16 copies of 1x1 convolution and ViT linear
// weights (same layout). The two outputs are
// compared byte for byte (padding included) before timing. Before each call
// a 64 MiB buffer is written, so that the weights come from memory as they do
// in a step (the optimizer has just written them, between other layers'
// work). Alternating repeats (oneDNN, host, oneDNN, ...); medians in ms and
// the bytes moved per ms.
//   weight_reorders [threads] [repeats]
#include <cstdlib>
#include <cstring>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "elastic/core/context.hpp"
#include "elastic/core/random.hpp"
#include "elastic/core/timer.hpp"
#include "elastic/graph/node.hpp"

using namespace elastic;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {
struct Case {
  const char* what;
  dnnl::memory::dims dims;
  tag from_tag;
  dt to_type;
  tag to_tag;
};
}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 9;
  Context ctx(threads);
  const auto& eng = ctx.engine();
  auto& stream = ctx.stream();
  const Case cases[] = {
      {"3x3 weight, fp32 forward", {512, 512, 3, 3}, tag::abcd, dt::f32, tag::Acdb32a},
      {"3x3 weight, fp32 forward", {256, 256, 3, 3}, tag::abcd, dt::f32, tag::Acdb32a},
      {"1x1/2 weight, fp32 forward (padded)", {2048, 1024, 1, 1}, tag::abcd, dt::f32, tag::Acdb48a},
      {"3x3 weight, bf16 forward", {512, 512, 3, 3}, tag::abcd, dt::bf16, tag::AcdB32a2b},
      {"3x3 weight, bf16 forward", {256, 256, 3, 3}, tag::abcd, dt::bf16, tag::AcdB32a2b},
      {"3x3 weight, bf16 forward", {128, 128, 3, 3}, tag::abcd, dt::bf16, tag::AcdB64a2b},
      {"1x1/2 weight, bf16 forward (padded)", {2048, 1024, 1, 1}, tag::abcd, dt::bf16, tag::AcdB48a2b},
      {"1x1/2 weight, fp32 backward_data", {2048, 1024, 1, 1}, tag::abcd, dt::f32, tag::BAcd16a16b},
      {"1x1/2 weight, bf16 backward_data", {2048, 1024, 1, 1}, tag::abcd, dt::bf16, tag::BAcd8a16b2a},
      {"3x3 weight gradient", {512, 512, 3, 3}, tag::ABcd16b16a, dt::f32, tag::abcd},
      {"3x3 weight gradient", {256, 256, 3, 3}, tag::ABcd16b16a, dt::f32, tag::abcd},
      {"1x1/2 weight gradient", {2048, 1024, 1, 1}, tag::ABcd16b16a, dt::f32, tag::abcd},
      {"1x1 weight, bf16 copy (matmul)", {2048, 512, 1, 1}, tag::abcd, dt::bf16, tag::abcd},
      {"ViT linear weight, bf16 copy", {3072, 768}, tag::ab, dt::bf16, tag::ab},
      {"ViT linear weight, bf16 copy", {768, 768}, tag::ab, dt::bf16, tag::ab},
  };
  fmt::print("weight_reorders: {} threads, {} alternating repeats; medians, ms per call (GB/s moved)\n", threads,
             repeats);
  fmt::print("{:38} {:>15} {:>11} {:>16} {:>16} {:>16} {:>8}\n", "layout change", "dims", "from", "to", "oneDNN",
             "host", "speedup");
  Rng rng(7);
  std::vector<float> flush(16 << 20);
  bool all_equal = true;
  for (const Case& c : cases) {
    const dnnl::memory::desc from_md(c.dims, dt::f32, c.from_tag), to_md(c.dims, c.to_type, c.to_tag);
    dnnl::memory from(from_md, eng), to_dnnl(to_md, eng), to_host(to_md, eng);
    // Values with bits below bf16's precision, so that rounding shows.
    float* p = static_cast<float*>(from.get_data_handle());
    for (std::size_t i = 0; i < from_md.get_size() / sizeof(float); ++i) p[i] = rng.uniform(-2.0f, 2.0f);
    std::memset(to_dnnl.get_data_handle(), 0x7f, to_md.get_size());
    std::memset(to_host.get_data_handle(), 0x3f, to_md.get_size());
    const dnnl::reorder prim(from, to_dnnl);
    const Call host = reorder_call(from, to_host);
    const bool on_host = detail::host_reorder(from_md, to_md);
    const auto run = [&](int side) {
      if (side == 0) {
        prim.execute(stream, from, to_dnnl);
        stream.wait();
      } else {
        host(stream);
      }
    };
    run(0);
    run(1);
    const bool equal = std::memcmp(to_dnnl.get_data_handle(), to_host.get_data_handle(), to_md.get_size()) == 0;
    all_equal = all_equal && equal && on_host;
    std::vector<double> times[2];
    for (int r = 0; r < repeats; ++r) {
      for (int side = 0; side < 2; ++side) {
        for (std::size_t i = 0; i < flush.size(); i += 16) flush[i] += 1.0f;
        const Stopwatch t;
        run(side);
        times[side].push_back(t.elapsed_ms());
      }
    }
    const double bytes = double(from_md.get_size() + to_md.get_size());
    const double a = summarize(times[0]).median, b = summarize(times[1]).median;
    const auto name = [](tag t) {
      return t == tag::abcd          ? "abcd"
             : t == tag::ab          ? "ab"
             : t == tag::Acdb32a     ? "Acdb32a"
             : t == tag::Acdb48a     ? "Acdb48a"
             : t == tag::AcdB32a2b   ? "AcdB32a2b"
             : t == tag::AcdB48a2b   ? "AcdB48a2b"
             : t == tag::AcdB64a2b   ? "AcdB64a2b"
             : t == tag::ABcd16b16a  ? "ABcd16b16a"
             : t == tag::ABcd16a16b  ? "ABcd16a16b"
             : t == tag::BAcd16a16b  ? "BAcd16a16b"
             : t == tag::ABcd8a16b2a ? "ABcd8a16b2a"
             : t == tag::BAcd8a16b2a ? "BAcd8a16b2a"
                                     : "?";
    };
    fmt::print("{:38} {:>15} {:>11} {:>11} {:>4} {:>7.3f} ({:5.1f}) {:>7.3f} ({:5.1f}) {:>7.2f}x{}\n", c.what,
               fmt::format("{}", fmt::join(c.dims, "x")), name(c.from_tag), name(c.to_tag),
               c.to_type == dt::f32 ? "f32" : "bf16", a, bytes / a / 1e6, b, bytes / b / 1e6, a / b,
               !on_host ? "  NOT ON THE HOST"
               : equal  ? ""
                        : "  OUTPUTS DIFFER");
  }
  if (!all_equal) {
    fmt::print("a case above did not take the host path or gave other bytes than oneDNN's reorder\n");
    return 1;
  }
  return 0;
}
