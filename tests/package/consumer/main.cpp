// Builds a two-layer graph through the installed umbrella header and checks
// that a forward pass produces the expected shape; unless ENGINE_ONLY, uses the
// input pipeline's target (codecs, libmatio) through its own umbrella header.
#include <cstdio>

#ifndef ENGINE_ONLY
#include <elastic/data.hpp>
#endif
#include <elastic/elastic.hpp>

int main() {
  elastic::Context ctx(1);
  elastic::Graph g(ctx);
  auto x = g.input("x", {2, 3, 8, 8});
  auto c = g.add<elastic::Conv2d>(
      {x}, "conv",
      elastic::Conv2dOptions{.in_channels = 3, .out_channels = 4, .kernel_h = 3, .kernel_w = 3, .padding = 1});
  g.mark_output(c);
  g.finalize(1);
  g.forward(false);
  const auto y = g.read(c);
  const bool shape_ok = y.shape() == elastic::Shape{2, 4, 8, 8};
#ifdef ENGINE_ONLY
  const bool data_ok = true;
#else
  const std::uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  const bool data_ok = elastic::data::parse_class_list("5-9").size() == 5 &&
                       elastic::data::sniff_format(png_magic, 8) == elastic::data::ImageFormat::png;
#endif
  const bool ok = shape_ok && data_ok;
  std::printf("consumer: output %s, data %s\n", shape_ok ? "ok" : "wrong shape", data_ok ? "ok" : "wrong");
  return ok ? 0 : 1;
}
