#include "elastic/layers/pool.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include <doctest/doctest.h>

#include "elastic/layers/activation.hpp"
#include "elastic/layers/conv.hpp"
#include "elastic/layers/linear.hpp"
#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_pool_test {

using namespace elastic;

namespace {
// Direct NCHW pooling in double with torch's semantics: padded positions are
// skipped by max (they are -inf) and counted as zeros by average (divisor kh*kw).
std::vector<double> reference_pool(const Tensor& x, const PoolOptions& o, bool max, const Shape& y) {
  const auto N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const auto sh = o.stride_h ? o.stride_h : o.kernel_h, sw = o.stride_w ? o.stride_w : o.kernel_w;
  std::vector<double> out;
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t i = 0; i < y[2]; ++i)
        for (std::int64_t j = 0; j < y[3]; ++j) {
          double acc = max ? -std::numeric_limits<double>::infinity() : 0.0;
          for (std::int64_t a = 0; a < o.kernel_h; ++a)
            for (std::int64_t b = 0; b < o.kernel_w; ++b) {
              const auto h = i * sh - o.padding_h + a, w = j * sw - o.padding_w + b;
              if (h < 0 || h >= H || w < 0 || w >= W) continue;
              const double v = x[((n * C + c) * H + h) * W + w];
              acc = max ? std::max(acc, v) : acc + v;
            }
          out.push_back(max ? acc : acc / double(o.kernel_h * o.kernel_w));
        }
  return out;
}

// Per (n, c) plane means in double: the reference for global average pooling.
std::vector<double> reference_means(const Tensor& x) {
  const auto N = x.dim(0), C = x.dim(1), HW = x.dim(2) * x.dim(3);
  std::vector<double> out;
  for (std::int64_t nc = 0; nc < N * C; ++nc) {
    double s = 0;
    for (std::int64_t p = 0; p < HW; ++p) s += x[nc * HW + p];
    out.push_back(s / double(HW));
  }
  return out;
}

double max_abs_diff(const Tensor& out, const std::vector<double>& ref) {
  REQUIRE(out.numel() == static_cast<std::int64_t>(ref.size()));
  double worst = 0;
  for (std::int64_t i = 0; i < out.numel(); ++i) worst = std::max(worst, std::abs(out[i] - ref[std::size_t(i)]));
  return worst;
}

// A shuffled ramp with step 0.01: all values distinct, so no window has a tie
// and a perturbation below half the step never moves an argmax.
Tensor distinct_input(Graph& g, ValueId x, std::uint64_t seed) {
  Tensor t(g.shape(x));
  std::vector<std::int64_t> rank(static_cast<std::size_t>(t.numel()));
  std::iota(rank.begin(), rank.end(), std::int64_t{0});
  Rng rng(seed);
  for (std::size_t i = rank.size() - 1; i > 0; --i) std::swap(rank[i], rank[rng.below(i + 1)]);
  for (std::int64_t i = 0; i < t.numel(); ++i) t[i] = 0.01f * float(rank[std::size_t(i)] - t.numel() / 2);
  g.write(x, t);
  return t;
}

struct Case {
  const char* label;
  Shape input;
  PoolOptions o;
  bool max;
  Shape expect;  // torch's floor((H + 2p - k) / s) + 1, worked out by hand
};
}  // namespace

TEST_CASE("max and average pooling match torch's definition, output size and finite differences") {
  const Case cases[] = {
      {"max 3x3 s2 p1",
       {3, 5, 9, 7},
       {.kernel_h = 3, .kernel_w = 3, .stride_h = 2, .stride_w = 2, .padding_h = 1, .padding_w = 1},
       true,
       {3, 5, 5, 4}},
      {"max 2x2 default stride, odd sizes", {3, 6, 7, 5}, {.kernel_h = 2, .kernel_w = 2}, true, {3, 6, 3, 2}},
      {"max 3x2 s(1,2) p(1,0)",
       {3, 5, 8, 7},
       {.kernel_h = 3, .kernel_w = 2, .stride_h = 1, .stride_w = 2, .padding_h = 1, .padding_w = 0},
       true,
       {3, 5, 8, 3}},
      {"avg 3x3 s1 p1 counts padding",
       {3, 5, 6, 9},
       {.kernel_h = 3, .kernel_w = 3, .stride_h = 1, .stride_w = 1, .padding_h = 1, .padding_w = 1},
       false,
       {3, 5, 6, 9}},
      {"avg 3x3 s2 p1 non-square",
       {3, 7, 10, 5},
       {.kernel_h = 3, .kernel_w = 3, .stride_h = 2, .stride_w = 2, .padding_h = 1, .padding_w = 1},
       false,
       {3, 7, 5, 3}},
      {"avg 2x3 s(2,1) p(1,1)",
       {3, 7, 8, 9},
       {.kernel_h = 2, .kernel_w = 3, .stride_h = 2, .stride_w = 1, .padding_h = 1, .padding_w = 1},
       false,
       {3, 7, 5, 9}},
      {"avg 2x2 default stride", {3, 3, 5, 8}, {.kernel_h = 2, .kernel_w = 2}, false, {3, 3, 2, 4}},
  };
  for (const auto& c : cases) {
    CAPTURE(c.label);
    Context ctx(2);
    Graph g(ctx);
    const auto x = g.input("x", c.input, true);
    const auto y = c.max ? g.add<MaxPool2d>({x}, "pool", c.o) : g.add<AvgPool2d>({x}, "pool", c.o);
    g.finalize();
    REQUIRE(g.shape(y) == c.expect);
    const Tensor in = c.max ? distinct_input(g, x, 5) : testing::random_input(g, x, 5);
    g.forward(true);
    CHECK(max_abs_diff(g.read(y), reference_pool(in, c.o, c.max, c.expect)) < 1e-5);
    // eps 1e-3 stays below half the 0.01 step of distinct_input: argmaxes hold.
    const auto res = testing::check_gradients(g, {x}, y, {.eps = 1e-3, .max_checks = 150});
    CHECK_MESSAGE(res.ok, res.report);
    CHECK(res.checked == 150);
  }
}

TEST_CASE("max pooling treats padding as -inf: all-negative inputs give negative border outputs") {
  Context ctx(1);
  Graph g(ctx);
  const auto x = g.input("x", {3, 5, 7, 6});
  const PoolOptions o{.kernel_h = 3, .kernel_w = 3, .stride_h = 2, .stride_w = 2, .padding_h = 1, .padding_w = 1};
  const auto y = g.add<MaxPool2d>({x}, "pool", o);
  g.finalize();
  const Tensor in = testing::random_input(g, x, 3, -2.0f, -0.5f);
  g.forward(false);
  const Tensor out = g.read(y);
  // Zero padding would make every border window's maximum 0.
  for (std::int64_t i = 0; i < out.numel(); ++i) REQUIRE(out[i] < -0.4f);
  CHECK(max_abs_diff(out, reference_pool(in, o, true, out.shape())) < 1e-6);
}

TEST_CASE("average pooling divides by the whole window, padding included (count_include_pad)") {
  Context ctx(1);
  Graph g(ctx);
  const auto x = g.input("x", {1, 3, 4, 5});
  const auto y = g.add<AvgPool2d>(
      {x}, "pool",
      PoolOptions{.kernel_h = 3, .kernel_w = 3, .stride_h = 1, .stride_w = 1, .padding_h = 1, .padding_w = 1});
  g.finalize();
  g.write(x, Tensor({1, 3, 4, 5}, 1.0f));
  g.forward(false);
  const Tensor out = g.read(y);
  REQUIRE(out.shape() == Shape{1, 3, 4, 5});
  for (std::int64_t c = 0; c < 3; ++c)
    for (std::int64_t h = 0; h < 4; ++h)
      for (std::int64_t w = 0; w < 5; ++w) {
        // Inside positions of the 3x3 window over a plane of ones.
        const int rows = 3 - (h == 0) - (h == 3), cols = 3 - (w == 0) - (w == 4);
        CHECK(out[(c * 4 + h) * 5 + w] == doctest::Approx(rows * cols / 9.0).epsilon(1e-6));
      }
}

TEST_CASE("max pooling's gradient goes to each window's maximum, summed where windows overlap") {
  // One plane 1x5, kernel 1x3 stride 1: windows [0..2], [1..3], [2..4] all
  // have their maximum at position 2, which therefore gets the sum of the three.
  Context ctx(1);
  Graph g(ctx);
  const auto x = g.input("x", {1, 1, 1, 5}, true);
  const auto y = g.add<MaxPool2d>({x}, "pool", PoolOptions{.kernel_h = 1, .kernel_w = 3, .stride_h = 1, .stride_w = 1});
  g.finalize();
  Tensor in({1, 1, 1, 5});
  const float v[] = {0.1f, -0.3f, 0.9f, 0.2f, 0.4f};
  std::copy(std::begin(v), std::end(v), in.data());
  g.write(x, in);
  g.forward(true);
  Tensor dy({1, 1, 1, 3});
  dy[0] = 1.0f;
  dy[1] = 10.0f;
  dy[2] = 100.0f;
  g.write_grad(y, dy);
  g.backward();
  const Tensor dx = g.read_grad(x);
  const float expect[] = {0, 0, 111, 0, 0};
  for (int i = 0; i < 5; ++i) CHECK(dx[i] == expect[i]);
}

TEST_CASE("global average pooling gives (N, C) channel means and their gradient") {
  Context ctx(2);
  Graph g(ctx);
  const auto x = g.input("x", {3, 13, 5, 7}, true);
  const auto y = g.add<GlobalAvgPool>({x}, "avgpool");
  g.finalize();
  REQUIRE(g.shape(y) == Shape{3, 13});
  const Tensor in = testing::random_input(g, x, 2);
  g.forward(true);
  CHECK(max_abs_diff(g.read(y), reference_means(in)) < 1e-6);
  const auto res = testing::check_gradients(g, {x}, y, {.eps = 1e-3, .max_checks = 150});
  CHECK_MESSAGE(res.ok, res.report);
  CHECK(res.checked == 150);
}

TEST_CASE("pooling backward reads no activation, so gradients stay right when the planner reuses their memory") {
  // Every intermediate value lives in the arena: after forward, the planner
  // may hand the pools' inputs and outputs to gradients.
  Context ctx(2);
  Graph g(ctx);
  const auto x = g.input("x", {3, 5, 11, 9}, true);
  const auto conv = g.add<Conv2d>(
      {x}, "conv", Conv2dOptions{.in_channels = 5, .out_channels = 6, .kernel_h = 3, .kernel_w = 3, .padding = 1});
  const auto maxpool = g.add<MaxPool2d>(
      {conv}, "maxpool",
      PoolOptions{.kernel_h = 3, .kernel_w = 3, .stride_h = 2, .stride_w = 2, .padding_h = 1, .padding_w = 1});
  const auto avgpool =
      g.add<AvgPool2d>({maxpool}, "avgpool", PoolOptions{.kernel_h = 2, .kernel_w = 2, .stride_h = 1, .stride_w = 1});
  const auto gap = g.add<GlobalAvgPool>({avgpool}, "gap");
  const auto y = g.add<Linear>({gap}, "fc", LinearOptions{.in_features = 6, .out_features = 4});
  g.finalize(1);
  CHECK(g.shape(maxpool) == Shape{3, 6, 6, 5});
  CHECK(g.shape(avgpool) == Shape{3, 6, 5, 4});
  for (ValueId v : {maxpool, avgpool, gap}) {
    CHECK_FALSE(g.topology().nodes[v].data_reads_inputs);
    CHECK_FALSE(g.topology().nodes[v].data_reads_output);
  }
  distinct_input(g, x, 9);
  const auto res = testing::check_gradients(g, {x}, y, {.eps = 1e-3, .max_checks = 100});
  CHECK_MESSAGE(res.ok, res.report);
}

namespace {
// Passes its input through, and records where the plan in force put that input.
class InputAddress final : public Node {
 public:
  using Node::Node;
  std::string_view type() const override { return "input_address"; }
  void setup(std::span<const dnnl::memory::desc> in, Context&, ParamStore&) override {
    set_output(in[0]);
    bytes_ = in[0].get_size();
  }
  void forward(const RunCtx& run) override {
    run.stream.wait();
    std::memcpy(dst().get_data_handle(), src().get_data_handle(), bytes_);
  }
  void backward_data(const RunCtx& run) override {
    if (!has_diff_src()) return;
    run.stream.wait();
    std::memcpy(diff_src().get_data_handle(), diff_dst().get_data_handle(), bytes_);
  }
  const void* seen = nullptr;

 protected:
  void on_bind() override { seen = src().get_data_handle(); }

 private:
  std::size_t bytes_ = 0;
};
}  // namespace

TEST_CASE("global average pooling follows its output buffer when another plan re-binds it") {
  Context ctx(1);
  Graph g(ctx);
  const auto x = g.input("x", {3, 4, 6, 5});
  auto h =
      g.add<Conv2d>({x}, "conv1", Conv2dOptions{.in_channels = 4, .out_channels = 6, .kernel_h = 3, .kernel_w = 3});
  h = g.add<Eltwise>({h}, "relu", Activation::relu);
  h = g.add<Conv2d>({h}, "conv2", Conv2dOptions{.in_channels = 6, .out_channels = 7, .kernel_h = 1, .kernel_w = 1});
  const auto gap = g.add<GlobalAvgPool>({h}, "gap");
  const auto tap = g.add<InputAddress>({gap}, "tap");
  const auto y = g.add<Linear>({tap}, "fc", LinearOptions{.in_features = 7, .out_features = 3});
  g.finalize(4);
  const auto& seen = g.node_as<InputAddress>(tap).seen;
  testing::random_input(g, x, 8);
  g.forward(false);
  const Tensor all = g.read(y).clone();
  const void* at_all = seen;
  // Only fc selected: nothing below it needs a gradient, so the arena is laid out anew.
  const std::size_t n = g.params().size();
  std::vector<bool> fc_only(n, false);
  fc_only[n - 2] = fc_only[n - 1] = true;
  g.select(fc_only);
  g.forward(false);
  const Tensor top = g.read(y).clone();
  const void* at_top = seen;
  g.select_none();
  g.forward(false);
  const Tensor none = g.read(y);
  const void* at_none = seen;
  // The plans place gap's output apart (else this test would not test the re-binding).
  CHECK((at_all != at_top || at_all != at_none));
  for (std::int64_t i = 0; i < all.numel(); ++i) {
    CHECK(top[i] == all[i]);
    CHECK(none[i] == all[i]);
  }
}

TEST_CASE("pooling rejects kernels larger than the padded input and bad options, naming the layer") {
  {
    Context ctx(1);
    Graph g(ctx);
    const auto x = g.input("x", {1, 2, 2, 6});  // padded 4x8
    g.add<MaxPool2d>({x}, "features.4", PoolOptions{.kernel_h = 5, .kernel_w = 5, .padding_h = 1, .padding_w = 1});
    CHECK_THROWS_WITH_AS(g.finalize(), doctest::Contains("features.4"), Error);
  }
  {
    Context ctx(1);
    Graph g(ctx);
    const auto x = g.input("x", {1, 2, 4, 4});  // padded 4x6
    g.add<AvgPool2d>({x}, "avg", PoolOptions{.kernel_h = 2, .kernel_w = 7, .padding_w = 1});
    CHECK_THROWS_WITH_AS(g.finalize(), doctest::Contains("avg"), Error);
  }
  {
    Context ctx(1);
    Graph g(ctx);
    const auto x = g.input("x", {4, 6});
    g.add<GlobalAvgPool>({x}, "avgpool");
    CHECK_THROWS_WITH_AS(g.finalize(), doctest::Contains("avgpool"), Error);
  }
  // Padding above half the kernel (torch refuses it too), missing kernel, negative stride.
  CHECK_THROWS_WITH_AS(MaxPool2d("p1", PoolOptions{.kernel_h = 2, .kernel_w = 2, .padding_h = 2}),
                       doctest::Contains("p1"), Error);
  CHECK_THROWS_WITH_AS(AvgPool2d("p2", PoolOptions{}), doctest::Contains("p2"), Error);
  CHECK_THROWS_WITH_AS(AvgPool2d("p3", PoolOptions{.kernel_h = 2, .kernel_w = 2, .stride_w = -1}),
                       doctest::Contains("p3"), Error);
}

TEST_CASE("a padded input exactly the kernel's size pools to one output") {
  Context ctx(1);
  Graph g(ctx);
  const auto x = g.input("x", {3, 2, 3, 1});
  const auto y =
      g.add<MaxPool2d>({x}, "pool", PoolOptions{.kernel_h = 5, .kernel_w = 3, .padding_h = 1, .padding_w = 1});
  g.finalize();
  REQUIRE(g.shape(y) == Shape{3, 2, 1, 1});
}

}  // namespace layers_pool_test
