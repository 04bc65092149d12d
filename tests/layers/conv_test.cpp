#include "elastic/layers/conv.hpp"

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_conv_test {

using namespace elastic;

namespace {
// Direct NCHW convolution in double: the independent reference for the forward pass.
std::vector<double> reference_conv(const Tensor& x, const Param& w, const Param* b, const Conv2dOptions& o,
                                   const Shape& y_shape) {
  const auto N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const auto K = y_shape[1], OH = y_shape[2], OW = y_shape[3];
  const auto cg = C / o.groups, kg = K / o.groups;
  std::vector<double> y(static_cast<std::size_t>(numel(y_shape)));
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t k = 0; k < K; ++k)
      for (std::int64_t oh = 0; oh < OH; ++oh)
        for (std::int64_t ow = 0; ow < OW; ++ow) {
          double acc = b ? b->value[k] : 0.0;
          const auto g = k / kg;
          for (std::int64_t c = 0; c < cg; ++c)
            for (std::int64_t i = 0; i < o.kernel_h; ++i)
              for (std::int64_t j = 0; j < o.kernel_w; ++j) {
                const auto h = oh * o.stride - o.padding + i * o.dilation;
                const auto ww = ow * o.stride - o.padding + j * o.dilation;
                if (h < 0 || h >= H || ww < 0 || ww >= W) continue;
                acc += double(x[((n * C + g * cg + c) * H + h) * W + ww]) *
                       w.value[((k * cg + c) * o.kernel_h + i) * o.kernel_w + j];
              }
          y[((n * K + k) * OH + oh) * OW + ow] = acc;
        }
  return y;
}

struct Case {
  const char* label;
  Shape input;
  Conv2dOptions o;
};
}  // namespace

TEST_CASE("conv2d forward matches a direct convolution and gradients match finite differences") {
  const Case cases[] = {
      {"3x3 pad 1 with bias",
       {3, 5, 7, 6},
       {.in_channels = 5, .out_channels = 6, .kernel_h = 3, .kernel_w = 3, .padding = 1}},
      {"stride 2 no bias",
       {3, 4, 9, 7},
       {.in_channels = 4, .out_channels = 10, .kernel_h = 3, .kernel_w = 3, .stride = 2, .padding = 1, .bias = false}},
      {"1x1 with bias", {3, 7, 5, 4}, {.in_channels = 7, .out_channels = 3, .kernel_h = 1, .kernel_w = 1}},
      {"1x1 no bias", {3, 7, 5, 4}, {.in_channels = 7, .out_channels = 5, .kernel_h = 1, .kernel_w = 1, .bias = false}},
      {"1x1 with bias, more outputs than inputs",
       {3, 5, 4, 4},
       {.in_channels = 5, .out_channels = 8, .kernel_h = 1, .kernel_w = 1}},
      {"1x1 with bias, more outputs than inputs, on one 1x1 image",
       {1, 3, 1, 1},
       {.in_channels = 3, .out_channels = 7, .kernel_h = 1, .kernel_w = 1}},
      {"1x1 on one 1x1 image (a weight and bias gradient from one row)",
       {1, 7, 1, 1},
       {.in_channels = 7, .out_channels = 3, .kernel_h = 1, .kernel_w = 1}},
      {"dilation 2",
       {3, 3, 9, 8},
       {.in_channels = 3, .out_channels = 5, .kernel_h = 3, .kernel_w = 3, .padding = 2, .dilation = 2}},
      {"groups 3",
       {3, 6, 6, 5},
       {.in_channels = 6, .out_channels = 9, .kernel_h = 3, .kernel_w = 3, .padding = 1, .groups = 3}},
      {"depthwise stride 2",
       {3, 12, 8, 9},
       {.in_channels = 12,
        .out_channels = 12,
        .kernel_h = 3,
        .kernel_w = 3,
        .stride = 2,
        .padding = 1,
        .groups = 12,
        .bias = false}},
      {"depthwise on 2x2 images, bias",
       {3, 16, 2, 2},
       {.in_channels = 16, .out_channels = 16, .kernel_h = 3, .kernel_w = 3, .padding = 1, .groups = 16}},
      {"depthwise on 1x1 images",
       {3, 16, 1, 1},
       {.in_channels = 16,
        .out_channels = 16,
        .kernel_h = 3,
        .kernel_w = 3,
        .padding = 1,
        .groups = 16,
        .bias = false}},
      {"depthwise stride 2 dilation 2 on 3x3 images",
       {2, 16, 3, 3},
       {.in_channels = 16,
        .out_channels = 16,
        .kernel_h = 3,
        .kernel_w = 3,
        .stride = 2,
        .padding = 2,
        .dilation = 2,
        .groups = 16}},
      {"non-square kernel",
       {3, 5, 6, 7},
       {.in_channels = 5, .out_channels = 4, .kernel_h = 1, .kernel_w = 3, .padding = 1}},
  };
  int host_weight_grads = 0, pointwise = 0;
  for (const auto& c : cases) {
    CAPTURE(c.label);
    Context ctx(2);
    Graph g(ctx);
    auto x = g.input("x", c.input, true);
    auto y = g.add<Conv2d>({x}, "conv", c.o);
    g.finalize(3);
    host_weight_grads += g.node_as<Conv2d>(y).host_weight_grad();
    pointwise += g.node_as<Conv2d>(y).pointwise();
    const Tensor xin = testing::random_input(g, x, 11);
    g.forward(true);
    const Tensor out = g.read(y);
    const auto& ps = g.params();
    const auto ref = reference_conv(xin, ps[0], c.o.bias ? &ps[1] : nullptr, c.o, out.shape());
    double worst = 0;
    for (std::int64_t i = 0; i < out.numel(); ++i) worst = std::max(worst, std::abs(out[i] - ref[i]));
    CHECK(worst < 1e-4);

    const auto res = testing::check_gradients(g, {x}, y);
    CHECK_MESSAGE(res.ok, res.report);
    CHECK(res.checked > 0);
  }
  // oneDNN 2.6 has no depthwise weight-gradient kernel for the images smaller
  // than the kernel above: their host loop is what the gradient check checked.
  CHECK(host_weight_grads >= 2);
  // The five 1x1 stride-1 cases ran as matmuls (setup_pointwise), the rest as convolutions.
  CHECK(pointwise == 5);
}

TEST_CASE("conv2d rejects an input whose channel count differs from in_channels, naming the layer") {
  Context ctx(1);
  Graph g(ctx);
  auto x = g.input("x", {2, 4, 8, 8});
  g.add<Conv2d>({x}, "stem", Conv2dOptions{.in_channels = 3, .out_channels = 8, .kernel_h = 3, .kernel_w = 3});
  CHECK_THROWS_WITH_AS(g.finalize(), doctest::Contains("stem"), Error);
}

TEST_CASE("conv2d params use torchvision names and shapes") {
  Context ctx(1);
  Graph g(ctx);
  auto x = g.input("x", {1, 6, 5, 5});
  g.add<Conv2d>({x}, "layer1.0.conv1",
                Conv2dOptions{.in_channels = 6, .out_channels = 4, .kernel_h = 3, .kernel_w = 3, .groups = 2});
  g.finalize();
  REQUIRE(g.params().size() == 2);
  CHECK(g.params()[0].name == "layer1.0.conv1.weight");
  CHECK(g.params()[0].shape == Shape{4, 3, 3, 3});
  CHECK(g.params()[1].name == "layer1.0.conv1.bias");
}

}  // namespace layers_conv_test
