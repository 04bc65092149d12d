#include "elastic/graph/backward_plan.hpp"

#include <doctest/doctest.h>

#include "elastic/core/random.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace graph_backward_plan_test {

using namespace elastic;

namespace {
// A chain input -> n0 -> n1 -> ... with one param per layer node.
Topology chain(int layers) {
  Topology t;
  t.nodes.push_back({.is_input = true, .bytes = 100});
  for (int i = 0; i < layers; ++i)
    t.nodes.push_back({.inputs = {i}, .params = {i}, .weights_reads_inputs = true, .bytes = 100});
  t.nodes.back().is_output = true;
  t.num_params = layers;
  return t;
}
}  // namespace

TEST_CASE("backward_data runs only from the loss down to the earliest selected param") {
  const auto t = chain(6);
  std::vector<bool> mask(6, false);
  mask[2] = mask[4] = true;  // params of nodes 3 and 5
  const auto plan = derive_plan(t, mask);
  for (int node = 0; node < 7; ++node) {
    CAPTURE(node);
    CHECK(plan.active[node] == (node >= 3));
    CHECK(plan.run_data[node] == (node >= 4));  // node 3 needs no input gradient
    CHECK(plan.run_weights[node] == (node == 3 || node == 5));
  }
}

TEST_CASE("an empty selection runs no backward at all and a full one runs every layer") {
  const auto t = chain(4);
  const auto none = derive_plan(t, std::vector<bool>(4, false));
  const auto all = derive_plan(t, std::vector<bool>(4, true));
  for (int node = 0; node < 5; ++node) {
    CHECK_FALSE(none.active[node]);
    CHECK_FALSE(none.run_data[node]);
    CHECK(all.run_weights[node] == (node > 0));
    CHECK(all.run_data[node] == (node > 1));
  }
}

TEST_CASE("only the branch that leads to a selected param gets gradients at a join") {
  // 0 input; 1 = a(0) [p0]; 2 = b(0) [p1]; 3 = add(1, 2); 4 = head(3) [p2]
  Topology t;
  t.nodes = {{.is_input = true, .bytes = 64},
             {.inputs = {0}, .params = {0}, .bytes = 64},
             {.inputs = {0}, .params = {1}, .bytes = 64},
             {.inputs = {1, 2}, .bytes = 64},
             {.inputs = {3}, .params = {2}, .is_output = true, .bytes = 64}};
  t.num_params = 3;
  const auto plan = derive_plan(t, {false, true, false});
  CHECK(plan.active[2]);
  CHECK_FALSE(plan.active[1]);
  CHECK(plan.need_diff_src[3] == std::vector<bool>{false, true});
  CHECK(plan.run_data[4]);
  CHECK_FALSE(plan.run_weights[4]);
  CHECK_FALSE(plan.run_data[2]);
  CHECK(plan.run_weights[2]);
}

TEST_CASE("a mask of the wrong length is rejected") {
  CHECK_THROWS_AS(derive_plan(chain(3), std::vector<bool>(2, true)), Error);
}

TEST_CASE("buffers alive at the same time never share memory") {
  Rng rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<Lifetime> items;
    const int n = 1 + static_cast<int>(rng.below(40));
    for (int i = 0; i < n; ++i) {
      const int a = static_cast<int>(rng.below(30)), len = static_cast<int>(rng.below(10));
      items.push_back({static_cast<std::int64_t>(1 + rng.below(5000)), a, a + len});
    }
    std::int64_t total = 0;
    const auto off = assign_offsets(items, total);
    std::int64_t peak_live = 0;
    for (int step = 0; step < 40; ++step) {
      std::int64_t live = 0;
      for (const auto& it : items)
        if (it.begin <= step && step <= it.end) live += (it.bytes + 63) / 64 * 64;
      peak_live = std::max(peak_live, live);
    }
    CHECK(total >= peak_live);
    for (int i = 0; i < n; ++i) {
      CHECK(off[i] % 64 == 0);
      CHECK(off[i] + items[i].bytes <= total);
      for (int j = i + 1; j < n; ++j) {
        const bool same_time = items[i].begin <= items[j].end && items[j].begin <= items[i].end;
        const bool same_space = off[i] < off[j] + items[j].bytes && off[j] < off[i] + items[i].bytes;
        if (same_time && same_space) FAIL("items ", i, " and ", j, " overlap");
      }
    }
  }
}

TEST_CASE("a plan that trains only the last layers keeps fewer activations than full training") {
  const auto t = chain(10);
  std::vector<bool> last(10, false);
  last[9] = true;
  const auto full_plan = derive_plan(t, std::vector<bool>(10, true));
  const auto last_plan = derive_plan(t, last);
  const auto full = plan_memory(t, full_plan);
  const auto partial = plan_memory(t, last_plan);
  const auto none = plan_memory(t, derive_plan(t, std::vector<bool>(10, false)));
  // Full training keeps every layer's input until its backward_weights.
  CHECK(full.arena_bytes >= 9 * 128);
  CHECK(partial.arena_bytes < full.arena_bytes / 3);
  CHECK(none.arena_bytes <= partial.arena_bytes);
  // Gradients exist only where the plan needs them.
  CHECK(partial.grad_offset[3] == -1);
  CHECK(full.grad_offset[3] >= 0);
}

TEST_CASE("a folded convolution's input stays apart from its map's output, only while the fold applies") {
  // input -> conv 1 -> map 2 -> conv 3 -> map 4 -> head 5; every value 100 bytes.
  auto t = chain(5);
  const auto overlaps = [](const MemoryPlan& m, int a, int b) {
    return m.act_offset[a] < m.act_offset[b] + 100 && m.act_offset[b] < m.act_offset[a] + 100;
  };
  const std::vector<bool> head_only{false, false, false, false, true};
  // Unfolded, the map's output may take the memory of conv 3's input (dead after conv 3 ran).
  const auto plain = plan_memory(t, derive_plan(t, head_only));
  CHECK(overlaps(plain, 2, 4));
  t.folds = {{3, 4}};
  CHECK(fold_applies(derive_plan(t, head_only), 3, 4));
  CHECK_FALSE(overlaps(plan_memory(t, derive_plan(t, head_only)), 2, 4));
  // Where conv 3 runs backward or map 4 trains, the fold does not apply: no constraint.
  for (const auto& mask :
       {std::vector<bool>{false, false, true, false, true}, std::vector<bool>{false, false, false, true, true}}) {
    const auto plan = derive_plan(t, mask);
    CHECK_FALSE(fold_applies(plan, 3, 4));
  }
}

TEST_CASE("a node's saved buffer lives from its forward to its backward, only where backward_data runs") {
  // 0 input; 1 = linear(0) [p0]; 2 = gelu(1), saving 100 bytes, reading nothing in backward;
  // 3 = head(2) [p1], the output.
  Topology t;
  t.nodes = {{.is_input = true, .bytes = 100},
             {.inputs = {0}, .params = {0}, .weights_reads_inputs = true, .bytes = 100},
             {.inputs = {1}, .bytes = 100, .saved_bytes = 100},
             {.inputs = {2}, .params = {1}, .weights_reads_inputs = true, .is_output = true, .bytes = 100}};
  t.num_params = 2;
  const auto apart = [](std::int64_t a, std::int64_t b) { return a + 100 <= b || b + 100 <= a; };
  const auto full = plan_memory(t, derive_plan(t, {true, true}));
  REQUIRE(full.saved_offset[2] >= 0);
  CHECK(full.saved_offset[0] == -1);
  CHECK(full.saved_offset[1] == -1);
  // Alive with it: value 1 (read by its forward), value 2 (the head reads it until its
  // backward), and the two gradients its backward reads and writes.
  for (const std::int64_t other : {full.act_offset[1], full.act_offset[2], full.grad_offset[1], full.grad_offset[2]}) {
    REQUIRE(other >= 0);
    CHECK(apart(full.saved_offset[2], other));
  }
  // Value 1 is dead once the gelu's forward has run (nothing of it is kept for backward), so
  // its gradient, written later by the gelu's backward, takes the same memory; were value 1
  // kept until then, the two would be apart.
  CHECK(full.grad_offset[1] == full.act_offset[1]);
  auto keeping = t;
  keeping.nodes[2].saved_bytes = 0;
  keeping.nodes[2].data_reads_inputs = true;
  const auto kept = plan_memory(keeping, derive_plan(keeping, {true, true}));
  CHECK(apart(kept.grad_offset[1], kept.act_offset[1]));
  // With only the head trained, the gelu runs no backward and saves nothing.
  const auto head = plan_memory(t, derive_plan(t, {false, true}));
  CHECK(head.saved_offset[2] == -1);
  CHECK(head.arena_bytes < full.arena_bytes);
}

TEST_CASE("a value read by two consumers gets its second gradient through a temporary") {
  // 0 input; 1 = a(0) [p0]; 2 = b(1) [p1]; 3 = add(1, 2) -> output
  Topology t;
  t.nodes = {{.is_input = true, .bytes = 64},
             {.inputs = {0}, .params = {0}, .bytes = 256},
             {.inputs = {1}, .params = {1}, .bytes = 256},
             {.inputs = {1, 2}, .is_output = true, .bytes = 256}};
  t.num_params = 2;
  const auto plan = derive_plan(t, {true, true});
  const auto mem = plan_memory(t, plan);
  // The add (processed first in backward) writes value 1's gradient directly; node 2 adds into it.
  CHECK(mem.temp_offset[3][0] == -1);
  CHECK(mem.temp_offset[2][0] >= 0);
  CHECK(mem.temp_offset[2][0] != mem.grad_offset[1]);
}

}  // namespace graph_backward_plan_test
