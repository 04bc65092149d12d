// Builds a two-layer graph through the installed umbrella header and checks
// that a forward pass produces the expected shape.
#include <elastic/elastic.hpp>

#include <cstdio>

int main() {
  elastic::Context ctx(1);
  elastic::Graph g(ctx);
  auto x = g.input("x", {2, 3, 8, 8});
  auto c = g.add<elastic::Conv2d>({x}, "conv", elastic::Conv2dOptions{.in_channels = 3, .out_channels = 4,
                                                                      .kernel_h = 3, .kernel_w = 3, .padding = 1});
  g.mark_output(c);
  g.finalize(1);
  g.forward(false);
  const auto y = g.read(c);
  const bool ok = y.shape() == elastic::Shape{2, 4, 8, 8};
  std::printf("consumer: output %s\n", ok ? "ok" : "wrong shape");
  return ok ? 0 : 1;
}
