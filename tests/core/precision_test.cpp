// bf16 graphs: every layer computes the same function as in fp32 to bf16's
// accuracy, really in bf16 (values stored in bf16, results not fp32's), with
// fp32 params and gradients; and the CPU check that refuses bf16 without
// native bf16 dot products.
#include "elastic/core/precision.hpp"

#include <bit>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include <doctest/doctest.h>

#include "elastic/core/random.hpp"
#include "elastic/layers/activation.hpp"
#include "elastic/layers/add.hpp"
#include "elastic/layers/attention.hpp"
#include "elastic/layers/batchnorm.hpp"
#include "elastic/layers/concat.hpp"
#include "elastic/layers/conv.hpp"
#include "elastic/layers/dropout.hpp"
#include "elastic/layers/flatten.hpp"
#include "elastic/layers/layernorm.hpp"
#include "elastic/layers/linear.hpp"
#include "elastic/layers/loss.hpp"
#include "elastic/layers/mul.hpp"
#include "elastic/layers/pool.hpp"
#include "elastic/layers/relayout.hpp"
#include "elastic/layers/tokens.hpp"
#include "elastic/optim/optimizer.hpp"
#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace core_precision_test {

using namespace elastic;

TEST_CASE("--precision parses fp32 and bf16 and names the flag otherwise") {
  CHECK(parse_precision("fp32") == Precision::fp32);
  CHECK(parse_precision("bf16") == Precision::bf16);
  CHECK(to_string(Precision::bf16) == "bf16");
  CHECK(activation_type(Precision::bf16) == dnnl::memory::data_type::bf16);
  CHECK(activation_type(Precision::fp32) == dnnl::memory::data_type::f32);
  try {
    parse_precision("fp16");
    FAIL("fp16 was accepted");
  } catch (const UsageError& e) {
    CHECK(std::string(e.what()) == "--precision: 'fp16' is not one of fp32, bf16");
  }
}

TEST_CASE("bf16 is refused below oneDNN's avx512_core_bf16, naming the missing CPU feature") {
  using isa = dnnl::cpu_isa;
  for (auto below : {isa::avx2, isa::avx512_core, isa::avx512_core_vnni, isa::avx2_vnni}) {
    const std::string why = precision_unsupported(Precision::bf16, below);
    CHECK(why.find("avx512_bf16") != std::string::npos);
    CHECK(why.find('\n') == std::string::npos);
    CHECK(precision_unsupported(Precision::fp32, below).empty());
  }
  CHECK(precision_unsupported(Precision::bf16, isa::avx512_core_bf16).empty());
  CHECK(precision_unsupported(Precision::bf16, isa::avx512_core_amx).empty());
}

namespace {

// The CPU's feature flags as Linux reports them (empty where there is no /proc/cpuinfo).
std::set<std::string> cpu_flags() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::set<std::string> flags;
    for (std::string w; words >> w;) flags.insert(w);
    return flags;
  }
  return {};
}

}  // namespace

// The bf16 checks of this and other test files return early where bf16 is unavailable: this
// keeps a wrong refusal on a CPU that has bf16 from passing as such a skip.
TEST_CASE("bf16 is available exactly where the CPU has native bf16 dot products") {
#if defined(__x86_64__) && defined(__linux__)
  if (std::getenv("DNNL_MAX_CPU_ISA") || std::getenv("ONEDNN_MAX_CPU_ISA")) {
    MESSAGE("not checked: DNNL_MAX_CPU_ISA or ONEDNN_MAX_CPU_ISA caps oneDNN below what the CPU has");
    return;
  }
  const auto flags = cpu_flags();
  REQUIRE(flags.count("sse2") == 1);  // the flags were read
  CHECK(precision_supported(Precision::bf16) == (flags.count("avx512_bf16") > 0));
  CHECK(precision_supported(Precision::fp32));
#else
  MESSAGE("not checked: the CPU flags are read from Linux's /proc/cpuinfo on x86-64");
#endif
}

// On a CPU with bf16 this checks the graph is accepted; ctest's core_precision_capped runs it
// again with oneDNN capped at plain AVX-512 (DNNL_MAX_CPU_ISA, ELASTIC_EXPECT_NO_BF16 set),
// where the refusal must happen.
TEST_CASE("a bf16 graph is refused on a CPU without native bf16, naming the missing feature") {
  Context ctx(1);
  if (std::getenv("ELASTIC_EXPECT_NO_BF16")) REQUIRE_FALSE(precision_supported(Precision::bf16));
  if (precision_supported(Precision::bf16)) {
    const Graph g(ctx, Precision::bf16);
    CHECK(g.precision() == Precision::bf16);
  } else {
    try {
      const Graph g(ctx, Precision::bf16);
      FAIL("a bf16 graph was built on a CPU without native bf16");
    } catch (const UsageError& e) {
      const std::string what = e.what();
      CHECK(what.rfind("a bf16 graph needs a CPU with native bf16 dot products", 0) == 0);
      CHECK(what.find("avx512_bf16") != std::string::npos);
      CHECK(what.find('\n') == std::string::npos);
    }
  }
  const Graph g(ctx, Precision::fp32);
  CHECK(g.precision() == Precision::fp32);
}

namespace {

double rel_l2(const Tensor& a, const Tensor& ref) {
  double err = 0, norm = 0;
  for (std::int64_t i = 0; i < ref.numel(); ++i) {
    err += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  return norm > 0 ? std::sqrt(err / norm) : std::sqrt(err);
}

Tensor param_grad(Graph& g, std::size_t k) {
  const Param& p = g.params()[k];
  Tensor t(p.shape);
  std::copy(p.grads().begin(), p.grads().end(), t.data());
  return t;
}

struct Outcome {
  Tensor y, dx;
  std::vector<Tensor> dparams;
  dnnl::memory::data_type type;
};

// Builds `layers` on an input of `shape` in a graph of precision `p`; runs a
// training forward and a backward with a fixed random output gradient.
// With `exact`, the inputs are multiples of 1/128, which bf16 holds exactly (so that a max
// pooling picks the same element in both formats).
using Builder = std::function<ValueId(Graph&, ValueId)>;
Outcome run(Precision p, const Shape& shape, const Builder& layers, bool exact) {
  Context ctx(2);
  Graph g(ctx, p);
  const ValueId x = g.input("x", shape, true);
  const ValueId y = layers(g, x);
  g.finalize(5);
  Tensor in = testing::random_input(g, x, 11);
  if (exact) {
    for (auto& v : in.span()) v = std::round(v * 128) / 128;
    g.write(x, in);
  }
  g.forward(true);
  Outcome o;
  o.y = g.read(y);
  o.type = g.node(y).output_desc().data_type();
  Rng rng(13);
  Tensor r(g.shape(y));
  for (auto& v : r.span()) v = rng.uniform(-1, 1);
  g.write_grad(y, r);
  g.backward();
  o.dx = g.read_grad(x);
  for (std::size_t k = 0; k < g.params().size(); ++k) o.dparams.push_back(param_grad(g, k));
  return o;
}

// The bf16 graph against the fp32 one: within 1.5e-2 (relative L2) in the
// output and every gradient, its output stored in bf16 and, unless the inputs
// are `exact`, not fp32's (rounding happened).
void compare(const char* what, const Shape& shape, const Builder& layers, bool exact = false) {
  const std::string name = what;
  CAPTURE(name);
  const double tol = 1.5e-2;
  const Outcome a = run(Precision::fp32, shape, layers, exact);
  const Outcome b = run(Precision::bf16, shape, layers, exact);
  CHECK(a.type == dnnl::memory::data_type::f32);
  CHECK(b.type == dnnl::memory::data_type::bf16);
  const double ey = rel_l2(b.y, a.y);
  CHECK(ey <= tol);
  if (!exact) CHECK(ey > 1e-6);
  const double ex = rel_l2(b.dx, a.dx);
  CAPTURE(ex);
  CHECK(ex <= tol);
  REQUIRE(a.dparams.size() == b.dparams.size());
  for (std::size_t k = 0; k < a.dparams.size(); ++k) {
    CAPTURE(k);
    CHECK(rel_l2(b.dparams[k], a.dparams[k]) <= tol);
  }
}

bool cpu_has_bf16() {
  if (!precision_supported(Precision::bf16)) MESSAGE("bf16 layer checks not run: this CPU has no avx512_bf16");
  return precision_supported(Precision::bf16);
}

}  // namespace

TEST_CASE("every layer in a bf16 graph computes what it computes in fp32, to bf16's accuracy") {
  if (!cpu_has_bf16()) return;
  const auto conv = [](Conv2dOptions o) { return [o](Graph& g, ValueId x) { return g.add<Conv2d>({x}, "conv", o); }; };
  compare("conv 3x3", {2, 8, 7, 7},
          conv({.in_channels = 8, .out_channels = 16, .kernel_h = 3, .kernel_w = 3, .padding = 1}));
  compare("conv 3x3 stride 2, bias, blocked output", {2, 16, 9, 9},
          conv({.in_channels = 16,
                .out_channels = 32,
                .kernel_h = 3,
                .kernel_w = 3,
                .stride = 2,
                .padding = 1,
                .blocked_output = true}));
  compare("depthwise conv", {2, 16, 8, 8},
          conv({.in_channels = 16, .out_channels = 16, .kernel_h = 3, .kernel_w = 3, .padding = 1, .groups = 16}));
  compare("depthwise conv on 2x2 images (weight gradient on the host)", {2, 32, 2, 2},
          conv({.in_channels = 32, .out_channels = 32, .kernel_h = 3, .kernel_w = 3, .padding = 1, .groups = 32}));
  compare("1x1 conv with bias (matmuls; the weight gradient an inner product's)", {2, 24, 5, 5},
          conv({.in_channels = 24, .out_channels = 40}));
  compare("1x1 conv, no bias (matmuls)", {2, 24, 5, 5}, conv({.in_channels = 24, .out_channels = 40, .bias = false}));
  compare("linear, tokens", {2, 5, 24}, [](Graph& g, ValueId x) {
    return g.add<Linear>({x}, "fc", LinearOptions{.in_features = 24, .out_features = 12});
  });
  // 600 rows: the forward runs on the inner product (forward_on_inner_product), not the matmul.
  REQUIRE(forward_on_inner_product(dnnl::memory::data_type::bf16, 600));
  REQUIRE_FALSE(forward_on_inner_product(dnnl::memory::data_type::bf16, 10));
  compare("linear, tokens, 600 rows", {4, 150, 24}, [](Graph& g, ValueId x) {
    return g.add<Linear>({x}, "fc", LinearOptions{.in_features = 24, .out_features = 12});
  });
  for (bool batch_stats : {false, true})
    compare(batch_stats ? "batch norm, batch statistics" : "batch norm, frozen", {2, 16, 5, 5},
            [batch_stats](Graph& g, ValueId x) {
              const ValueId y = g.add<BatchNorm2d>({x}, "bn", BatchNorm2dOptions{.num_features = 16});
              g.node_as<BatchNorm2d>(y).set_batch_stats(batch_stats);
              return y;
            });
  for (auto kind : {Activation::relu, Activation::relu6, Activation::gelu, Activation::sigmoid, Activation::silu,
                    Activation::hardswish, Activation::hardsigmoid})
    compare(activation_spec(kind).name.data(), {2, 8, 4, 4},
            [kind](Graph& g, ValueId x) { return g.add<Eltwise>({x}, "act", kind); });
  compare("mul by a channel gate", {2, 16, 4, 4}, [](Graph& g, ValueId x) {
    const ValueId pooled = g.add<AvgPool2d>({x}, "pool", PoolOptions{.kernel_h = 4, .kernel_w = 4});
    const ValueId gate = g.add<Eltwise>({pooled}, "gate", Activation::sigmoid);
    return g.add<Mul>({x, gate}, "mul");
  });
  compare("channel scale (a trained per-channel param)", {2, 8, 4, 4},
          [](Graph& g, ValueId x) { return g.add<ChannelScale>({x}, "block", "block.layer_scale", 8); });
  compare("tokens and back", {2, 8, 4, 4}, [](Graph& g, ValueId x) {
    const ValueId t = g.add<PatchTokens>({x}, "tokens");
    const ValueId a = g.add<Eltwise>({t}, "gelu", Activation::gelu);
    return g.add<TokenImage>({a}, "image", 4, 4);
  });
  compare("concat", {2, 8, 4, 4}, [](Graph& g, ValueId x) {
    const ValueId a = g.add<Eltwise>({x}, "gelu", Activation::gelu);
    return g.add<Concat>({x, a}, "cat");
  });
  compare("add", {2, 8, 4, 4}, [](Graph& g, ValueId x) {
    const ValueId a = g.add<Eltwise>({x}, "gelu", Activation::gelu);
    return g.add<Add>({a, x}, "add");
  });
  compare(
      "max pool on values bf16 holds exactly", {2, 16, 8, 8},
      [](Graph& g, ValueId x) {
        return g.add<MaxPool2d>(
            {x}, "pool",
            PoolOptions{.kernel_h = 3, .kernel_w = 3, .stride_h = 2, .stride_w = 2, .padding_h = 1, .padding_w = 1});
      },
      true);
  compare("average pool, global average pool, flatten", {2, 8, 6, 6}, [](Graph& g, ValueId x) {
    const ValueId a = g.add<AvgPool2d>({x}, "avg", PoolOptions{.kernel_h = 2, .kernel_w = 2});
    const ValueId b = g.add<Flatten>({a}, "flatten");
    const ValueId c = g.add<GlobalAvgPool>({x}, "gap");
    return g.add<Linear>(
        {g.add<Add>({c, g.add<Linear>({b}, "fc0", LinearOptions{.in_features = 72, .out_features = 8})}, "join")},
        "fc1", LinearOptions{.in_features = 8, .out_features = 4});
  });
  compare("dropout", {4, 64}, [](Graph& g, ValueId x) { return g.add<Dropout>({x}, "drop", 0.3f, 9); });
  compare("layer norm", {2, 5, 32},
          [](Graph& g, ValueId x) { return g.add<LayerNorm>({x}, "ln", LayerNormOptions{.normalized_shape = 32}); });
  compare("attention", {2, 6, 48},
          [](Graph& g, ValueId x) { return g.add<ScaledDotProductAttention>({x}, "attn", 2); });
  compare("patch tokens, class token and position embedding, select token", {2, 8, 3, 3}, [](Graph& g, ValueId x) {
    const ValueId t = g.add<PatchTokens>({x}, "tokens");
    const ValueId c = g.add<ClassTokenPosEmbed>({t}, "embed", 8, 9);
    return g.add<SelectToken>({g.add<LayerNorm>({c}, "ln", LayerNormOptions{.normalized_shape = 8})}, "cls");
  });
  compare("relayout both ways", {2, 16, 4, 4}, [](Graph& g, ValueId x) {
    const ValueId b = g.add<Relayout>({x}, "to_blocked", true);
    const ValueId c = g.add<Conv2d>(
        {b}, "conv",
        Conv2dOptions{
            .in_channels = 16, .out_channels = 16, .kernel_h = 3, .kernel_w = 3, .padding = 1, .blocked_output = true});
    return g.add<Relayout>({c}, "to_nhwc", false);
  });
}

TEST_CASE("a bf16 graph's loss is fp32 and its param gradients match fp32's; activations take half the memory") {
  if (!cpu_has_bf16()) return;
  const auto build = [](Context& ctx, Precision p, ValueId& logits, ValueId& loss) {
    auto g = std::make_unique<Graph>(ctx, p);
    const ValueId x = g->input("x", {4, 16, 6, 6});
    ValueId h = g->add<Conv2d>(
        {x}, "conv", Conv2dOptions{.in_channels = 16, .out_channels = 32, .kernel_h = 3, .kernel_w = 3, .padding = 1});
    h = g->add<Eltwise>({h}, "relu", Activation::relu);
    h = g->add<GlobalAvgPool>({h}, "gap");
    logits = g->add<Linear>({h}, "fc", LinearOptions{.in_features = 32, .out_features = 5});
    loss = g->add<SoftmaxCrossEntropy>({logits}, "loss");
    g->finalize(3);
    testing::random_input(*g, x, 4);
    return g;
  };
  Context ctx(2);
  ValueId logits = -1, loss = -1;
  auto a = build(ctx, Precision::fp32, logits, loss);
  auto b = build(ctx, Precision::bf16, logits, loss);
  const std::vector<std::int32_t> labels{0, 3, 1, 4};
  double losses[2];
  std::int64_t arena[2];
  std::vector<Tensor> grads[2];
  int i = 0;
  for (Graph* g : {a.get(), b.get()}) {
    g->node_as<SoftmaxCrossEntropy>(loss).set_labels(labels);
    g->grad_data(loss)[0] = 1.0f;
    g->forward(true);
    g->backward();
    losses[i] = g->node_as<SoftmaxCrossEntropy>(loss).loss();
    arena[i] = g->plan_arena_bytes();
    for (std::size_t k = 0; k < g->params().size(); ++k) grads[i].push_back(param_grad(*g, k));
    ++i;
  }
  CHECK(b->desc(loss).data_type() == dnnl::memory::data_type::f32);
  CHECK(b->node(logits).output_desc().data_type() == dnnl::memory::data_type::bf16);
  CHECK(std::abs(losses[1] - losses[0]) <= 1e-2 * std::abs(losses[0]));
  CHECK(losses[1] != losses[0]);
  // The bound of tests/parity for every bf16 gradient: a ReLU whose input lies within bf16's
  // rounding of zero lets a different set of elements through, and on a layer this small
  // (144 values per channel) each such element is about 1/144 of a channel's sum.
  for (std::size_t k = 0; k < grads[0].size(); ++k) {
    CAPTURE(k);
    CHECK(rel_l2(grads[1][k], grads[0][k]) <= 5e-2);
  }
  // Activations and their gradients are stored in 2 bytes instead of 4.
  CHECK(arena[1] * 2 <= arena[0] + 1024);
  CHECK(arena[1] * 2 >= arena[0] - 1024);
}

namespace {

// How many of `v` have bits below bf16's 8-bit significand (bf16 holds none of them exactly).
std::int64_t below_bf16(std::span<const float> v) {
  std::int64_t n = 0;
  for (float x : v) n += (std::bit_cast<std::uint32_t>(x) & 0xFFFFu) != 0;
  return n;
}

}  // namespace

// A bf16 graph multiplies in bf16, but what the optimizer reads and writes keeps fp32's bits:
// each weight gradient (an fp32 sum), the update, the momentum and the weights after it (an
// update far below bf16's resolution still moves them), and the batch norm's running statistics.
TEST_CASE("a bf16 graph's gradients, weights, optimizer state and batch-norm statistics are fp32") {
  if (!cpu_has_bf16()) return;
  const auto build = [](Context& ctx, Precision p, ValueId& loss) {
    auto g = std::make_unique<Graph>(ctx, p);
    const ValueId x = g->input("x", {4, 8, 6, 6});
    ValueId h = g->add<Conv2d>(
        {x}, "conv",
        Conv2dOptions{.in_channels = 8, .out_channels = 16, .kernel_h = 3, .kernel_w = 3, .padding = 1, .bias = false});
    h = g->add<BatchNorm2d>({h}, "bn", BatchNorm2dOptions{.num_features = 16});
    g->node_as<BatchNorm2d>(h).set_batch_stats(true);
    h = g->add<Eltwise>({h}, "relu", Activation::relu);
    h = g->add<GlobalAvgPool>({h}, "gap");
    h = g->add<Linear>({h}, "fc", LinearOptions{.in_features = 16, .out_features = 5});
    loss = g->add<SoftmaxCrossEntropy>({h}, "loss");
    g->finalize(3);
    testing::random_input(*g, x, 4);
    const std::vector<std::int32_t> labels{0, 3, 1, 4};
    g->node_as<SoftmaxCrossEntropy>(loss).set_labels(labels);
    g->grad_data(loss)[0] = 1.0f;
    g->forward(true);
    g->backward();
    return g;
  };
  Context ctx(2);
  ValueId loss = -1;
  auto a = build(ctx, Precision::fp32, loss);
  auto b = build(ctx, Precision::bf16, loss);
  REQUIRE(b->precision() == Precision::bf16);

  // The running statistics: fp32 values near fp32's (the batch's mean and variance of the
  // bf16 convolution's output), not bf16's.
  for (const char* name : {"bn.running_mean", "bn.running_var"}) {
    CAPTURE(name);
    const int i = b->params().find_buffer(name);
    REQUIRE(i >= 0);
    const auto got = b->params().buffer(std::size_t(i)).values();
    const auto want = a->params().buffer(std::size_t(i)).values();
    Tensor tg({std::int64_t(got.size())}), tw({std::int64_t(want.size())});
    std::copy(got.begin(), got.end(), tg.data());
    std::copy(want.begin(), want.end(), tw.data());
    CHECK(rel_l2(tg, tw) <= 1e-2);
    CHECK(below_bf16(got) >= std::int64_t(got.size()) - 1);
  }

  // The gradients: fp32 sums of products of bf16 values (fc.bias's sums only the four bf16
  // gradients of the logits, which need few bits, so it is left out).
  ParamStore& ps = b->params();
  for (const Param& p : ps.params()) {
    if (p.name == "fc.bias") continue;
    CAPTURE(p.name);
    CHECK(below_bf16(p.grads()) >= p.size() * 9 / 10);
  }

  // One SGD step (momentum 0.9, no decay) with a rate that moves each weight by at most 1e-6:
  // below half a bf16 step of any weight over 2^-9 in size, which bf16 weights would not keep.
  const int k = ps.find("conv.weight");
  REQUIRE(k >= 0);
  const Param& w = ps[std::size_t(k)];
  float gmax = 0;
  for (float g : w.grads()) gmax = std::max(gmax, std::abs(g));
  REQUIRE(gmax > 0);
  const float lr = 1e-6f / gmax;
  const std::vector<float> before(w.values().begin(), w.values().end());
  SGDW sgd({.momentum = 0.9f, .weight_decay = 0.0f});
  std::vector<bool> only(ps.size(), false);
  only[std::size_t(k)] = true;
  sgd.step(ps, only, lr);
  const auto momentum = sgd.state().slots.at("conv.weight.momentum");
  std::int64_t moved = 0, exact = 0, sized = 0;
  for (std::int64_t i = 0; i < w.size(); ++i) {
    const float v = -(lr * w.grad[i]);
    exact += momentum[std::size_t(i)] == v && w.value[i] == before[std::size_t(i)] + v;
    if (std::abs(before[std::size_t(i)]) < 0x1p-9f) continue;
    ++sized;
    moved += w.value[i] != before[std::size_t(i)];
  }
  CHECK(exact == w.size());
  CHECK(below_bf16(momentum) >= w.size() * 9 / 10);
  REQUIRE(sized >= w.size() / 2);
  CHECK(moved >= sized * 9 / 10);
}

// Ones everywhere make every product 1, so each output is a count: up to 4608 here. A sum kept
// in bf16 stops growing at 256 (256 + 1 rounds back to 256), so these come out exact only if the
// kernels accumulate in fp32, in all three passes (the counts themselves are bf16 numbers).
TEST_CASE("bf16 convolutions and linear layers accumulate in fp32: long sums of ones are exact") {
  if (!cpu_has_bf16()) return;
  struct Case {
    const char* name;
    Shape in;
    Builder layer;
  };
  const auto conv = [](std::int64_t cin, std::int64_t cout, std::int64_t k) {
    return [=](Graph& g, ValueId x) {
      return g.add<Conv2d>(
          {x}, "conv",
          Conv2dOptions{.in_channels = cin, .out_channels = cout, .kernel_h = k, .kernel_w = k, .padding = k / 2});
    };
  };
  const Case cases[] = {
      {"linear, 4096 in, 1024 out, 1024 rows",
       {1024, 4096},
       [](Graph& g, ValueId x) {
         return g.add<Linear>({x}, "fc", LinearOptions{.in_features = 4096, .out_features = 1024});
       }},
      {"conv 3x3, 512 channels, 16x16", {4, 512, 16, 16}, conv(512, 64, 3)},
      {"conv 1x1 (matmuls), 512 to 320 channels, 16x16", {4, 512, 16, 16}, conv(512, 320, 1)},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    Context ctx(2);
    Graph g(ctx, Precision::bf16);
    const ValueId x = g.input("x", c.in, true);
    const ValueId y = c.layer(g, x);
    g.finalize(5);
    for (Param& p : g.params().params())
      std::fill(p.values().begin(), p.values().end(), p.role == ParamRole::bias ? 0.0f : 1.0f);
    Tensor in(c.in);
    std::fill(in.span().begin(), in.span().end(), 1.0f);
    g.write(x, in);
    g.forward(true);
    Tensor dy(g.shape(y));
    std::fill(dy.span().begin(), dy.span().end(), 1.0f);
    g.write_grad(y, dy);
    g.backward();
    const Tensor out = g.read(y), dx = g.read_grad(x);
    // The counts: taps inside the image along one axis of a k-tap kernel padded by k / 2.
    const auto taps = [](std::int64_t at, std::int64_t size, std::int64_t k) {
      std::int64_t n = 0;
      for (std::int64_t i = 0; i < k; ++i) n += at + i - k / 2 >= 0 && at + i - k / 2 < size;
      return n;
    };
    std::int64_t wrong_y = 0, wrong_dx = 0, wrong_dw = 0;
    const Param& w = g.params()[0];
    if (c.in.size() == 2) {
      const std::int64_t rows = c.in[0], cin = c.in[1], cout = w.shape[0];
      for (float v : out.span()) wrong_y += v != float(cin);
      for (float v : dx.span()) wrong_dx += v != float(cout);
      for (float v : w.grads()) wrong_dw += v != float(rows);
    } else {
      const std::int64_t n = c.in[0], cin = c.in[1], h = c.in[2], wd = c.in[3], cout = w.shape[0], k = w.shape[2];
      for (std::int64_t i = 0; i < out.numel(); ++i) {
        const std::int64_t col = i % wd, row = i / wd % h;
        wrong_y += out[i] != float(cin * taps(row, h, k) * taps(col, wd, k));
      }
      for (std::int64_t i = 0; i < dx.numel(); ++i) {
        const std::int64_t col = i % wd, row = i / wd % h;
        wrong_dx += dx[i] != float(cout * taps(row, h, k) * taps(col, wd, k));
      }
      // Weight (o, c, i, j) meets the image wherever tap (i, j) lands inside it.
      const auto reach = [&](std::int64_t tap, std::int64_t size) {
        std::int64_t m = 0;
        for (std::int64_t at = 0; at < size; ++at) m += at + tap - k / 2 >= 0 && at + tap - k / 2 < size;
        return m;
      };
      for (std::int64_t i = 0; i < w.size(); ++i)
        wrong_dw += w.grad[i] != float(n * reach(i / k % k, h) * reach(i % k, wd));
    }
    CHECK(wrong_y == 0);
    CHECK(wrong_dx == 0);
    CHECK(wrong_dw == 0);
    for (const Param& p : g.params().params())
      if (p.role == ParamRole::bias)  // a sum of the output gradient over rows and pixels
        for (float v : p.grads()) CHECK(v == float(dy.numel() / p.size()));
  }
}

// Attention has no weights: what shows its products run on bf16 operands is that it keeps its
// probabilities (the operand of P V and of both products of the backward) in bf16.
TEST_CASE("bf16 attention keeps its probabilities in bf16") {
  if (!cpu_has_bf16()) return;
  std::size_t bytes[2] = {};
  for (Precision p : {Precision::fp32, Precision::bf16}) {
    Context ctx(1);
    Graph g(ctx, p);
    const ValueId x = g.input("x", {2, 7, 48}, true);
    const ValueId a = g.add<ScaledDotProductAttention>({x}, "attn", 2);
    g.finalize(5);
    CHECK(g.node(a).output_desc().data_type() == activation_type(p));
    bytes[p == Precision::bf16] = g.node(a).own_bytes();
  }
  CHECK(bytes[0] == std::size_t(2 * 2 * 7 * 7 * 4));
  CHECK(bytes[1] * 2 == bytes[0]);
}

}  // namespace core_precision_test
