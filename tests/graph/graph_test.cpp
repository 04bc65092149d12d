#include "elastic/graph/graph.hpp"

#include <algorithm>
#include <memory>
#include <vector>

#include <doctest/doctest.h>

#include "elastic/core/resident.hpp"
#include "elastic/layers/add.hpp"
#include "elastic/layers/batchnorm.hpp"
#include "elastic/layers/conv.hpp"
#include "elastic/layers/linear.hpp"
#include "elastic/layers/pool.hpp"
#include "elastic/optim/optimizer.hpp"
#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace graph_graph_test {

using namespace elastic;

namespace {
Conv2dOptions conv3x3(std::int64_t in, std::int64_t out) {
  return {.in_channels = in, .out_channels = out, .kernel_h = 3, .kernel_w = 3, .padding = 1};
}

// x -> c1 -> c2 -> add(c2, c1) -> c3 -> output; c1's output has two consumers.
struct ResidualNet {
  ValueId x, c1, c2, sum, c3;
  explicit ResidualNet(Graph& g, bool input_grad) {
    x = g.input("x", {3, 5, 7, 6}, input_grad);
    c1 = g.add<Conv2d>({x}, "c1", conv3x3(5, 6));
    c2 = g.add<Conv2d>({c1}, "c2", conv3x3(6, 6));
    sum = g.add<Add>({c2, c1}, "add");
    c3 = g.add<Conv2d>({sum}, "c3", conv3x3(6, 4));
  }
};

std::vector<float> grads_of(Graph& g, int k) {
  const auto& p = g.params()[k];
  return {p.grad, p.grad + p.size()};
}
}  // namespace

TEST_CASE("gradients through a residual join match finite differences") {
  Context ctx(2);
  Graph g(ctx);
  ResidualNet net(g, true);
  g.finalize(1);
  testing::random_input(g, net.x, 2);
  const auto res = testing::check_gradients(g, {net.x}, net.c3);
  CHECK_MESSAGE(res.ok, res.report);
  CHECK(res.checked > 100);
}

TEST_CASE("a partial plan gives the selected params the same gradients as full backward") {
  Context ctx(2);
  Graph g(ctx);
  ResidualNet net(g, false);
  g.finalize(3);
  testing::random_input(g, net.x, 4);
  Tensor seed(g.shape(net.c3));
  Rng rng(9);
  for (auto& v : seed.span()) v = rng.uniform(-1, 1);
  g.write_grad(net.c3, seed);

  g.select_all();
  g.params().zero_grads();
  g.forward(true);
  g.backward();
  const auto full_c2w = grads_of(g, 2);
  const auto full_c3w = grads_of(g, 4);
  const auto full_bytes = g.plan_arena_bytes();

  // Select c2 and c3 only: c1 gets no gradient, backward_data stops above c2.
  std::vector<bool> mask{false, false, true, true, true, true};
  g.select(mask);
  CHECK(g.plan().run_data[net.sum]);
  CHECK(g.plan().run_weights[net.c2]);
  CHECK_FALSE(g.plan().run_data[net.c2]);
  CHECK_FALSE(g.plan().run_weights[net.c1]);
  g.params().zero_grads();
  g.forward(true);
  g.backward();
  CHECK(grads_of(g, 2) == full_c2w);
  CHECK(grads_of(g, 4) == full_c3w);
  for (float v : grads_of(g, 0)) CHECK(v == 0.0f);
  CHECK(g.plan_arena_bytes() <= full_bytes);
}

TEST_CASE("switching plans back and forth gives identical results") {
  Context ctx(2);
  Graph g(ctx);
  ResidualNet net(g, false);
  g.mark_output(net.c1);
  g.finalize(5);
  testing::random_input(g, net.x, 6);
  g.write_grad(net.c3, Tensor(g.shape(net.c3), 1.0f));
  g.forward(true);
  g.backward();
  const auto first = grads_of(g, 0);
  const Tensor out = g.read(net.c3);
  g.select({false, false, false, false, true, true});
  g.forward(true);
  g.backward();
  g.select_all();
  g.forward(true);
  g.backward();
  CHECK(grads_of(g, 0) == first);
  const Tensor again = g.read(net.c3);
  CHECK(std::equal(out.span().begin(), out.span().end(), again.span().begin()));
}

TEST_CASE("a long run's selections keep at most kCachedPlans plans, and a plan made again gives the same results") {
  Context ctx(2);
  Graph g(ctx);
  const ValueId x = g.input("x", {2, 4, 6, 6});
  ValueId h = x;
  for (const char* name : {"c1", "c2", "c3", "c4"}) h = g.add<Conv2d>({h}, name, conv3x3(4, 4));
  g.finalize(7);
  testing::random_input(g, x, 8);
  g.write_grad(h, Tensor(g.shape(h), 1.0f));
  g.forward(true);
  g.backward();
  const auto first = grads_of(g, 0);
  for (std::uint32_t bits = 1; bits < 120; ++bits) {  // 119 masks over the 8 params
    std::vector<bool> mask(8);
    for (std::size_t k = 0; k < 8; ++k) mask[k] = (bits >> k) & 1;
    g.select(mask);
    g.forward(true);
    g.backward();
    CHECK(g.cached_plans() <= Graph::kCachedPlans);
  }
  CHECK(g.cached_plans() < 119);
  g.select_all();  // made again: the first plan was dropped
  g.forward(true);
  g.backward();
  CHECK(grads_of(g, 0) == first);
}

namespace {
// x -> c1 -> c2 -> c3, 16 channels: oneDNN wants blocked weights, so every conv re-lays them out
// (in bf16, into bf16 copies).
struct Chain {
  Context ctx{2};
  Graph g;
  ValueId x, c1, c2, c3;
  explicit Chain(Precision p = Precision::fp32) : g(ctx, p) {
    x = g.input("x", {2, 16, 9, 7});
    c1 = g.add<Conv2d>({x}, "c1", conv3x3(16, 16));
    c2 = g.add<Conv2d>({c1}, "c2", conv3x3(16, 16));
    c3 = g.add<Conv2d>({c2}, "c3", conv3x3(16, 16));
    g.finalize(11);
    testing::random_input(g, x, 12);
    g.write_grad(c3, Tensor(g.shape(c3), 0.01f));
  }
  // forward, backward, and a plain SGD update of the selected params.
  void step(const std::vector<bool>& mask) {
    g.forward(true);
    g.backward();
    for (std::size_t k = 0; k < mask.size(); ++k)
      if (mask[k])
        for (std::int64_t i = 0; i < g.params()[k].size(); ++i) g.params()[k].value[i] -= 0.1f * g.params()[k].grad[i];
  }
};

// fp32, and bf16 where the CPU has it.
std::vector<Precision> precisions() {
  std::vector<Precision> p{Precision::fp32};
  if (precision_supported(Precision::bf16)) p.push_back(Precision::bf16);
  return p;
}
}  // namespace

TEST_CASE("training steps that reuse frozen convolutions' re-laid-out weights are bit-identical to rebuilding them") {
  for (Precision precision : precisions())
    for (const std::vector<bool>& mask : {std::vector<bool>{false, false, false, false, true, true},
                                          std::vector<bool>{true, true, false, false, false, false}}) {
      CAPTURE(to_string(precision));
      Chain plain(precision), reuse(precision);
      plain.g.select(mask);
      reuse.g.select(mask);
      reuse.g.reuse_frozen_weights(true);
      for (int s = 0; s < 3; ++s) {
        plain.step(mask);
        reuse.step(mask);
        const Tensor a = plain.g.read(plain.c3), b = reuse.g.read(reuse.c3);
        CHECK(std::equal(a.span().begin(), a.span().end(), b.span().begin()));
      }
      for (int k = 0; k < 6; ++k) CHECK(grads_of(plain.g, k) == grads_of(reuse.g, k));
      auto va = plain.g.params().value_arena(), vb = reuse.g.params().value_arena();
      CHECK(std::equal(va.begin(), va.end(), vb.begin()));
    }
}

TEST_CASE("only frozen weights keep copies between steps; trained ones share one buffer, refilled for each pass") {
  for (Precision precision : precisions()) {
    CAPTURE(to_string(precision));
    Chain net(precision);
    // Every conv trained: no copy of its own. c1 and c2 frozen: one copy each, 16x16x3x3 values.
    CHECK(net.g.weight_copy_bytes() == 0);
    const std::vector<bool> mask{false, false, false, false, true, true};
    net.g.select(mask);
    const std::size_t value = precision == Precision::bf16 ? 2 : 4;
    CHECK(net.g.weight_copy_bytes() == 2 * 16 * 16 * 9 * value);
    std::size_t frozen = 0;  // what each node's copy takes whenever it is frozen
    for (std::size_t i = 0; i < net.g.size(); ++i) frozen += net.g.node(int(i)).frozen_copy_bytes();
    CHECK(frozen == 3 * 16 * 16 * 9 * value);
    net.g.select_all();
    CHECK(net.g.weight_copy_bytes() == 0);
  }
}

TEST_CASE("frozen weights' copies given up: none kept, and every step's results are the same, bit for bit") {
  for (Precision precision : precisions()) {
    CAPTURE(to_string(precision));
    const std::vector<bool> mask{false, false, false, false, true, true};
    Chain kept(precision), given_up(precision);
    for (Chain* c : {&kept, &given_up}) {
      c->g.select(mask);
      c->g.reuse_frozen_weights(true);
    }
    given_up.g.keep_weight_copies(false);
    CHECK(kept.g.weight_copy_bytes() > 0);
    CHECK(given_up.g.weight_copy_bytes() == 0);
    CHECK_FALSE(given_up.g.keeps_weight_copies());
    for (int s = 0; s < 3; ++s) {
      kept.step(mask);
      given_up.step(mask);
      const Tensor a = kept.g.read(kept.c3), b = given_up.g.read(given_up.c3);
      CHECK(std::equal(a.span().begin(), a.span().end(), b.span().begin()));
    }
    for (int k = 0; k < 6; ++k) CHECK(grads_of(kept.g, k) == grads_of(given_up.g, k));
    auto va = kept.g.params().value_arena(), vb = given_up.g.params().value_arena();
    CHECK(std::equal(va.begin(), va.end(), vb.begin()));
    given_up.g.keep_weight_copies(true);  // and back: the copies return
    given_up.step(mask);
    CHECK(given_up.g.weight_copy_bytes() == kept.g.weight_copy_bytes());
  }
  // 1x1 convolutions and linear layers in bf16 read one copy in forward and
  // backward_data: the shared buffer is refilled before backward_data, so a step
  // with every layer trained gives p1 the gradient it gets when p2, p3 and fc
  // keep copies of their own.
  if (precisions().size() < 2) return;
  const auto build = [](Graph& g) {
    const ValueId x = g.input("x", {2, 16, 5, 5});
    ValueId h = x;
    for (const char* name : {"p1", "p2", "p3"})
      h = g.add<Conv2d>({h}, name, Conv2dOptions{.in_channels = 16, .out_channels = 16});
    const ValueId fc =
        g.add<Linear>({g.add<GlobalAvgPool>({h}, "gap")}, "fc", LinearOptions{.in_features = 16, .out_features = 16});
    g.finalize(3);
    testing::random_input(g, x, 4);
    g.write_grad(fc, Tensor(g.shape(fc), 0.01f));
  };
  Context ctx(2);
  Graph all(ctx, Precision::bf16), own(ctx, Precision::bf16);
  build(all);
  build(own);
  own.select({true, true, false, false, false, false, false, false});
  CHECK(own.weight_copy_bytes() == 3 * 16 * 16 * 2);  // p2, p3 and fc, in bf16
  for (Graph* g : {&all, &own}) {
    g->forward(true);
    g->backward();
  }
  CHECK(grads_of(all, 0) == grads_of(own, 0));
}

TEST_CASE("activations given back between steps: the memory leaves the process, every step's results stay the same") {
  for (const std::vector<bool>& mask :
       {std::vector<bool>(6, true), std::vector<bool>{false, false, true, true, true, true}}) {
    Chain kept, released;
    for (Chain* c : {&kept, &released}) c->g.select(mask);
    for (int s = 0; s < 3; ++s) {
      kept.step(mask);
      released.g.release_activations();
      released.step(mask);
      const Tensor a = kept.g.read(kept.c3), b = released.g.read(released.c3);
      CHECK(std::equal(a.span().begin(), a.span().end(), b.span().begin()));
    }
    for (int k = 0; k < 6; ++k) CHECK(grads_of(kept.g, k) == grads_of(released.g, k));
    auto va = kept.g.params().value_arena(), vb = released.g.params().value_arena();
    CHECK(std::equal(va.begin(), va.end(), vb.begin()));
  }
  // Activations of 4 MiB each: a step writes the arena, giving it back lowers the resident set.
  Context ctx(2);
  Graph g(ctx);
  const ValueId x = g.input("x", {4, 16, 128, 128});
  const ValueId c1 = g.add<Conv2d>({x}, "c1", conv3x3(16, 16));
  const ValueId c2 = g.add<Conv2d>({c1}, "c2", conv3x3(16, 16));
  const ValueId c3 = g.add<Conv2d>({c2}, "c3", conv3x3(16, 16));
  g.finalize(2);
  testing::random_input(g, x, 3);
  g.write_grad(c3, Tensor(g.shape(c3), 0.01f));
  g.forward(true);
  g.backward();
  const std::int64_t arena = g.plan_arena_bytes(), before = resident_bytes();
  REQUIRE(arena >= 8 * 1024 * 1024);
  g.release_activations();
  CHECK(before - resident_bytes() >= arena / 2);
}

TEST_CASE("a frozen convolution's weights written directly count from the next select() or reuse_frozen_weights()") {
  for (Precision precision : precisions()) {
    CAPTURE(to_string(precision));
    Chain net(precision);
    const std::vector<bool> mask{false, false, false, false, true, true};  // c1 and c2 frozen
    net.g.select(mask);
    net.g.reuse_frozen_weights(true);
    net.g.forward(true);
    const Tensor before = net.g.read(net.c3);
    for (auto& w : net.g.params()[0].values()) w *= 2.0f;  // c1.weight, behind the optimizer's back
    net.g.forward(true);
    const Tensor stale = net.g.read(net.c3);
    CHECK(std::equal(before.span().begin(), before.span().end(), stale.span().begin()));  // the documented contract
    net.g.select(mask);
    net.g.forward(true);
    const Tensor fresh = net.g.read(net.c3);
    net.g.reuse_frozen_weights(false);
    net.g.forward(true);
    const Tensor rebuilt = net.g.read(net.c3);
    CHECK_FALSE(std::equal(before.span().begin(), before.span().end(), fresh.span().begin()));
    CHECK(std::equal(fresh.span().begin(), fresh.span().end(), rebuilt.span().begin()));
    for (auto& w : net.g.params()[0].values()) w *= 0.5f;
    net.g.reuse_frozen_weights(true);  // turning it on again starts afresh too
    net.g.forward(true);
    const Tensor restored = net.g.read(net.c3);
    CHECK(std::equal(before.span().begin(), before.span().end(), restored.span().begin()));
  }
}

// The same contract for the layers whose only copy is bf16's (a Linear, a 1x1 convolution run
// as matmuls): where the kernel reads a copy (bf16), a direct write shows only after select();
// where it reads the param itself (fp32: no copy), at once. Either way select() shows it.
TEST_CASE("a frozen Linear's and 1x1 convolution's bf16 copies are kept between steps") {
  for (Precision precision : precisions())
    // A Linear on 4 rows, one on 600 (in bf16 its forward runs on the inner product), a 1x1 convolution.
    for (int kind = 0; kind < 3; ++kind) {
      const bool linear = kind < 2;
      CAPTURE(to_string(precision));
      CAPTURE(kind);
      Context ctx(2);
      Graph g(ctx, precision);
      const ValueId x = g.input("x", kind == 0 ? Shape{4, 32} : kind == 1 ? Shape{4, 150, 32} : Shape{2, 16, 5, 5});
      const ValueId a =
          linear ? g.add<Linear>({x}, "a", LinearOptions{.in_features = 32, .out_features = 24})
                 : g.add<Conv2d>({x}, "a", Conv2dOptions{.in_channels = 16, .out_channels = 24, .bias = false});
      const ValueId y =
          linear ? g.add<Linear>({a}, "b", LinearOptions{.in_features = 24, .out_features = 8})
                 : g.add<Conv2d>({a}, "b", Conv2dOptions{.in_channels = 24, .out_channels = 8, .bias = false});
      g.finalize(3);
      testing::random_input(g, x, 5);
      std::vector<bool> mask(g.params().size(), true);
      mask[0] = false;              // a.weight frozen
      if (linear) mask[1] = false;  // and a.bias
      g.select(mask);
      const bool copied = g.node(a).frozen_copy_bytes() > 0;
      CHECK(copied == (precision == Precision::bf16));
      g.reuse_frozen_weights(true);
      g.forward(true);
      const Tensor before = g.read(y);
      for (auto& w : g.params()[0].values()) w *= 2.0f;  // behind the optimizer's back
      g.forward(true);
      const Tensor next = g.read(y);
      CHECK(std::equal(before.span().begin(), before.span().end(), next.span().begin()) == copied);
      g.select(mask);
      g.forward(true);
      const Tensor fresh = g.read(y);
      CHECK_FALSE(std::equal(before.span().begin(), before.span().end(), fresh.span().begin()));
      if (!copied) CHECK(std::equal(next.span().begin(), next.span().end(), fresh.span().begin()));
    }
}

TEST_CASE(
    "updating each node's params as soon as backward has their streamed gradients equals updating after backward") {
  for (const std::vector<bool>& mask :
       {std::vector<bool>(6, true), std::vector<bool>{true, false, false, true, false, false}}) {
    const std::size_t nodes = mask[4] ? 3 : 2;  // nodes with a selected param: c1, c2 (and c3)
    for (int which = 0; which < 2; ++which) {
      Chain after, fused;
      std::unique_ptr<Optimizer> opt_a, opt_f;
      if (which == 0) {
        opt_a = std::make_unique<SGDW>(SGDWOptions{});
        opt_f = std::make_unique<SGDW>(SGDWOptions{});
      } else {
        opt_a = std::make_unique<Adam>();
        opt_f = std::make_unique<Adam>();
      }
      after.g.select(mask);
      fused.g.select(mask);
      fused.g.stream_grads(true);
      // Streamed, the gradients of different nodes share one buffer.
      CHECK(fused.g.params()[0].grad == fused.g.params()[4].grad);
      CHECK(fused.g.params()[1].grad != fused.g.params()[0].grad);
      std::vector<int> order;
      for (int s = 0; s < 3; ++s) {
        after.g.forward(true);
        after.g.backward();
        opt_a->step(after.g.params(), mask, 0.05f);
        fused.g.forward(true);
        order.clear();
        fused.g.backward([&](int node) {
          order.push_back(node);
          opt_f->step(fused.g.params(), fused.g.topology().nodes[std::size_t(node)].params, mask, 0.05f);
        });
      }
      CHECK(order.size() == nodes);
      CHECK(std::is_sorted(order.rbegin(), order.rend()));  // from the loss down
      auto va = after.g.params().value_arena(), vf = fused.g.params().value_arena();
      CHECK(std::equal(va.begin(), va.end(), vf.begin()));
      CHECK(opt_a->state() == opt_f->state());
      // Back to kept gradients: zeroed, one place per param again.
      fused.g.stream_grads(false);
      CHECK(fused.g.params()[0].grad != fused.g.params()[4].grad);
      for (const auto& p : fused.g.params().params())
        for (float v : p.grads()) CHECK(v == 0.0f);
    }
  }
}

namespace {
// x -> conv -> bn+relu -> 1x1 conv (bias) -> bn -> conv (bias, stride 2) -> bn+relu6 -> head conv:
// each norm can fold into the convolution before it (the 1x1 one runs as a matmul). The norms
// get random statistics, gammas and betas, so that a fold that dropped any part of the map shows.
struct NormChain {
  Context ctx{2};
  Graph g;
  ValueId x, c1, b1, c2, b2, c3, b3, head;
  explicit NormChain(Precision p) : g(ctx, p) {
    x = g.input("x", {2, 16, 10, 9});
    c1 = g.add<Conv2d>(
        {x}, "c1",
        Conv2dOptions{
            .in_channels = 16, .out_channels = 32, .kernel_h = 3, .kernel_w = 3, .padding = 1, .bias = false});
    b1 = g.add<BatchNorm2d>({c1}, "b1", BatchNorm2dOptions{.num_features = 32, .activation = Activation::relu});
    c2 = g.add<Conv2d>({b1}, "c2", Conv2dOptions{.in_channels = 32, .out_channels = 32});
    b2 = g.add<BatchNorm2d>({c2}, "b2", BatchNorm2dOptions{.num_features = 32});
    c3 = g.add<Conv2d>(
        {b2}, "c3",
        Conv2dOptions{.in_channels = 32, .out_channels = 16, .kernel_h = 3, .kernel_w = 3, .stride = 2, .padding = 1});
    b3 = g.add<BatchNorm2d>({c3}, "b3", BatchNorm2dOptions{.num_features = 16, .activation = Activation::relu6});
    head = g.add<Conv2d>({b3}, "head", conv3x3(16, 16));
    g.finalize(21);
    Rng rng(22);
    for (const ValueId b : {b1, b2, b3}) {
      const std::string name = g.node(b).name();
      auto& ps = g.params();
      for (float& v : ps[std::size_t(ps.find(name + ".weight"))].values()) v = rng.uniform(0.5f, 1.5f);
      for (float& v : ps[std::size_t(ps.find(name + ".bias"))].values()) v = rng.uniform(-0.5f, 0.5f);
      for (float& v : ps.buffer(std::size_t(ps.find_buffer(name + ".running_mean"))).values())
        v = rng.uniform(-0.3f, 0.3f);
      for (float& v : ps.buffer(std::size_t(ps.find_buffer(name + ".running_var"))).values())
        v = rng.uniform(0.5f, 2.0f);
    }
    testing::random_input(g, x, 23);
    g.write_grad(head, Tensor(g.shape(head), 0.01f));
  }
  // The head's params alone: every norm is frozen with nothing before it trained.
  std::vector<bool> head_only() {
    std::vector<bool> mask(g.params().size(), false);
    for (int k : g.node(head).param_ids()) mask[std::size_t(k)] = true;
    return mask;
  }
  // One step's output and head weight gradient.
  std::pair<std::vector<float>, std::vector<float>> step() {
    g.params().zero_grads();
    g.forward(true);
    g.backward();
    const Tensor out = g.read(head);
    return {{out.span().begin(), out.span().end()}, grads_of(g, g.node(head).param_ids()[0])};
  }
};

// Largest |a - b| over the largest |b|.
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, double(std::abs(a[i] - b[i])));
    scale = std::max(scale, double(std::abs(b[i])));
  }
  return diff / scale;
}
}  // namespace

TEST_CASE("frozen batch norms fold into the convolution before them and give the unfolded results") {
  for (Precision precision : precisions()) {
    CAPTURE(to_string(precision));
    NormChain n(precision);
    auto& c1 = n.g.node_as<Conv2d>(n.c1);
    auto& c2 = n.g.node_as<Conv2d>(n.c2);
    auto& c3 = n.g.node_as<Conv2d>(n.c3);
    // Every pair is linked on a CPU whose kernels want blocked or bf16 weights; in fp32 the
    // 1x1 matmul reads the param itself and keeps no copy to scale, so it does not fold.
    const auto& folds = n.g.folds();
    const auto linked = [&](ValueId c) {
      return std::any_of(folds.begin(), folds.end(), [&](const auto& f) { return f.first == c; });
    };
    CHECK(linked(n.c1));
    CHECK(linked(n.c2) == (precision == Precision::bf16));
    // Under the full plan nothing folds (the norms' params train).
    CHECK_FALSE(c1.map_folded());
    const auto [full_out, full_grad] = n.step();

    n.g.select(n.head_only());
    CHECK(c1.map_folded());
    CHECK(c2.map_folded() == linked(n.c2));
    CHECK(c3.map_folded() == linked(n.c3));
    // The memory plan knows the folds: a folded convolution's input never shares memory with
    // the output it writes for its map.
    CHECK(n.g.topology().folds == folds);
    const auto& topo = n.g.topology();
    const MemoryPlan mem = plan_memory(topo, n.g.plan());
    for (const auto& [c, b] : folds)
      for (int v : topo.nodes[std::size_t(c)].inputs) {
        const std::int64_t a0 = mem.act_offset[std::size_t(v)], b0 = mem.act_offset[std::size_t(b)];
        if (a0 >= 0 && b0 >= 0)
          CHECK((a0 + topo.nodes[std::size_t(v)].bytes <= b0 || b0 + topo.nodes[std::size_t(b)].bytes <= a0));
      }
    n.g.reuse_frozen_weights(true);
    const auto [out, grad] = n.step();
    const auto [again, again_grad] = n.step();  // from the kept scaled copies
    n.g.fold_maps(false);
    CHECK_FALSE(c1.map_folded());
    const auto [plain, plain_grad] = n.step();  // the kept copies refilled unscaled
    // fp32: the map moves into the weights and bias (a few ulps); bf16: the fold also skips
    // rounding the convolution's output to bf16 before the map.
    const double tol = precision == Precision::bf16 ? 3e-2 : 1e-5;
    CHECK(relative_error(out, plain) < tol);
    CHECK(relative_error(grad, plain_grad) < tol);
    CHECK(out == again);
    CHECK(grad == again_grad);
    // The unfolded step is the full plan's, bit for bit.
    CHECK(plain == full_out);
    // Folded again: the kept copies are scaled again.
    n.g.fold_maps(true);
    CHECK(n.step().first == out);
  }
}

TEST_CASE(
    "a batch norm does not fold where its params train, where the convolution before it runs backward, or "
    "while it uses batch statistics") {
  for (Precision precision : precisions()) {
    CAPTURE(to_string(precision));
    NormChain n(precision);
    auto& c1 = n.g.node_as<Conv2d>(n.c1);
    auto& c3 = n.g.node_as<Conv2d>(n.c3);
    // c1 trains: its backward reads its output only through b1's gradient, which b1 computes
    // from its own output; c1 does not fold (it runs backward), c3 (after the trained part) neither.
    std::vector<bool> mask = n.head_only();
    for (int k : n.g.node(n.c1).param_ids()) mask[std::size_t(k)] = true;
    n.g.select(mask);
    CHECK_FALSE(c1.map_folded());
    CHECK_FALSE(c3.map_folded());
    // b3's params train: c3 does not fold; c1 and c2 still do.
    mask = n.head_only();
    for (int k : n.g.node(n.b3).param_ids()) mask[std::size_t(k)] = true;
    n.g.select(mask);
    CHECK(c1.map_folded());
    CHECK_FALSE(c3.map_folded());
    // Batch statistics in training: the map does not apply, so the folded plan runs unfolded,
    // bit for bit.
    for (const ValueId b : {n.b1, n.b2, n.b3}) n.g.node_as<BatchNorm2d>(b).set_batch_stats(true);
    n.g.select(n.head_only());
    CHECK(c1.map_folded());
    const auto folded = n.step();
    n.g.fold_maps(false);
    const auto plain = n.step();
    CHECK(folded == plain);
  }
}

TEST_CASE("reading a value that is not kept names it") {
  Context ctx(1);
  Graph g(ctx);
  ResidualNet net(g, false);
  g.finalize();
  g.forward(false);
  CHECK_THROWS_WITH_AS(g.read(net.c2), doctest::Contains("c2"), Error);
  const Tensor out = g.read(net.c3);  // an output is kept: readable, with its shape
  CHECK(out.shape() == Shape{3, 4, 7, 6});
}

TEST_CASE("graph construction errors are reported") {
  Context ctx(1);
  Graph g(ctx);
  auto x = g.input("x", {1, 2, 4, 4});
  CHECK_THROWS_AS(g.add<Add>({x, 7}, "bad"), Error);
  auto y = g.input("y", {1, 3, 4, 4});
  g.add<Add>({x, y}, "mismatch");
  CHECK_THROWS_WITH_AS(g.finalize(), doctest::Contains("mismatch"), Error);
}

TEST_CASE("an input with a wrong shape is rejected on write") {
  Context ctx(1);
  Graph g(ctx);
  ResidualNet net(g, false);
  g.finalize();
  CHECK_THROWS_AS(g.write(net.x, Tensor({3, 5, 7, 7})), Error);
}

}  // namespace graph_graph_test
