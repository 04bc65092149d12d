// Batch norm followed by ReLU6 (or ReLU) with frozen statistics, as one node
// (the activation inside BatchNorm2d) against two (BatchNorm2d, then the
// activation's Eltwise node on oneDNN), on the channels-last images of
// MobileNetV2's and ResNet50's layers at batch 4: median forward and backward
// times of `repeats` steps, with gamma/beta trained (their sums in backward)
// and frozen (backward_data alone, as in an elastic step below the selection),
// in fp32 and bf16. `add` instead times an add of two images followed by the
// activation (ResNet50's block joins), both inputs' gradients wanted.
// Interleaved: each shape runs the two forms alternately.
// Usage: norm_activation [repeats] [relu|relu6] [bn|add]
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "elastic/graph/graph.hpp"
#include "elastic/layers/activation.hpp"
#include "elastic/layers/add.hpp"
#include "elastic/layers/batchnorm.hpp"

using namespace elastic;

namespace {

struct Times {
  double forward = 0, backward = 0;
};

Times measure(bool add, std::int64_t C, std::int64_t H, Precision precision, bool fused, bool trained, Activation act,
              int repeats) {
  Context ctx(2);
  Graph g(ctx, precision);
  const Shape shape{4, C, H, H};
  const ValueId x = g.input("x", shape, true), other = add ? g.input("b", shape, true) : x;
  const auto one = [&]() -> ValueId {
    if (add) return g.add<Add>({x, other}, "add", fused ? act : std::optional<Activation>());
    return g.add<BatchNorm2d>(
        {x}, "bn", BatchNorm2dOptions{.num_features = C, .activation = fused ? act : std::optional<Activation>()});
  };
  const ValueId y = fused ? one() : g.add<Eltwise>({one()}, "act", act);
  g.finalize(1);
  g.select(std::vector<bool>(g.params().size(), trained));
  Tensor t(shape);
  for (std::int64_t i = 0; i < t.numel(); ++i) t[i] = float((i * 37) % 100) / 10 - 3;  // both sides of both kinks
  g.write(x, t);
  if (add) g.write(other, t);
  g.write_grad(y, t);
  using clock = std::chrono::steady_clock;
  std::vector<double> f, b;
  for (int k = 0; k < repeats + 10; ++k) {
    const auto t0 = clock::now();
    g.forward(true);
    const auto t1 = clock::now();
    g.backward();
    const auto t2 = clock::now();
    if (k < 10) continue;
    f.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    b.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
  }
  std::nth_element(f.begin(), f.begin() + repeats / 2, f.end());
  std::nth_element(b.begin(), b.begin() + repeats / 2, b.end());
  return {f[repeats / 2], b[repeats / 2]};
}

}  // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 100;
  const bool relu = argc > 2 && std::string(argv[2]) == "relu";
  const bool add = argc > 3 && std::string(argv[3]) == "add";
  const Activation act = relu ? Activation::relu : Activation::relu6;
  const std::vector<std::array<std::int64_t, 2>> shapes =
      add ? std::vector<std::array<std::int64_t, 2>>{{256, 56}, {512, 28}, {1024, 14}, {2048, 7}}
          : std::vector<std::array<std::int64_t, 2>>{{96, 112}, {32, 112}, {144, 56}, {192, 28},  {384, 14}, {960, 7},
                                                     {64, 112}, {256, 56}, {128, 28}, {1024, 14}, {2048, 7}};
  fmt::print("{} + {}, batch 4, 2 threads; median of {} steps, ms: two nodes / one\n",
             add ? "add" : "batch norm (frozen statistics)", relu ? "relu" : "relu6", repeats);
  fmt::print("{:>6} {:>4} {:>5} {:>8}   {:>22} {:>22}\n", "C", "H", "prec", "gamma", "forward", "backward");
  double total[2] = {0, 0};
  for (const auto& [C, H] : shapes)
    for (Precision p : {Precision::fp32, Precision::bf16})
      for (bool trained : {true, false}) {
        if (add && !trained) continue;          // no params
        if (!precision_supported(p)) continue;  // no native bf16 here
        const Times two = measure(add, C, H, p, false, trained, act, repeats);
        const Times one = measure(add, C, H, p, true, trained, act, repeats);
        total[0] += two.forward + two.backward;
        total[1] += one.forward + one.backward;
        fmt::print("{:>6} {:>4} {:>5} {:>8}   {:>9.3f} / {:<9.3f}  {:>9.3f} / {:<9.3f}\n", C, H,
                   p == Precision::fp32 ? "fp32" : "bf16",
                   add       ? "-"
                   : trained ? "trained"
                             : "frozen",
                   two.forward, one.forward, two.backward, one.backward);
      }
  fmt::print("all rows, forward + backward: two nodes {:.2f} ms, one node {:.2f} ms ({:.2f}x)\n", total[0], total[1],
             total[0] / total[1]);
}
