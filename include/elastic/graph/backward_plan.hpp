// BackwardPlan: what one training step runs, derived from a mask of selected
// params. backward_data runs only on the stretch from the loss down to the
// earliest selected param, backward_weights only for selected params, and the
// memory plan keeps during forward only the activations those passes read.
// Pure functions of the graph's topology: no oneDNN here.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "elastic/core/error.hpp"

namespace elastic {

// The graph as the planner sees it. Values are numbered like the nodes that
// produce them (node i produces value i); nodes are in topological order.
struct Topology {
  struct NodeInfo {
    std::vector<int> inputs;  // value ids
    std::vector<int> params;  // param ids
    bool data_reads_inputs = false, data_reads_output = false;
    bool weights_reads_inputs = false, weights_reads_output = false;
    bool is_input = false;         // a graph input (buffer pinned, written by the user)
    bool requires_grad = false;    // graph input whose gradient is wanted
    bool is_output = false;        // value (and its gradient) pinned, readable after the step
    std::int64_t bytes = 0;        // size of the value (and of its gradient)
    std::int64_t saved_bytes = 0;  // a buffer of its own from its forward to its backward_data (Node::saved_bytes)
  };
  std::vector<NodeInfo> nodes;
  int num_params = 0;
  // (convolution, map) node pairs whose map can run inside the convolution's
  // kernel (Graph::folds): the convolution then writes the map's output while
  // it reads its own inputs, so those stay alive until the map's forward.
  std::vector<std::pair<int, int>> folds;
};

struct BackwardPlan {
  std::vector<bool> selected;                    // per param: gets a gradient and an optimizer update
  std::vector<bool> active;                      // per node: its output needs a gradient
  std::vector<bool> run_data;                    // per node: backward_data runs
  std::vector<bool> run_weights;                 // per node: backward_weights runs
  std::vector<std::vector<bool>> need_diff_src;  // per node, per input

  int num_selected() const { return static_cast<int>(std::count(selected.begin(), selected.end(), true)); }
};

// Whether the map of fold pair (c, b) runs inside convolution c under `plan`:
// when c runs no backward (its kept weight copy then holds the scaled weights)
// and b's params do not train (their gradients read c's output, which a fold
// never writes).
inline bool fold_applies(const BackwardPlan& plan, int c, int b) {
  return !plan.run_weights[std::size_t(b)] && !plan.run_data[std::size_t(c)] && !plan.run_weights[std::size_t(c)];
}

// Derives the plan of `mask` (one flag per param, forward order).
inline BackwardPlan derive_plan(const Topology& topo, const std::vector<bool>& mask) {
  if (static_cast<int>(mask.size()) != topo.num_params)
    fail("selection mask has {} entries but the graph has {} params", mask.size(), topo.num_params);
  const std::size_t n = topo.nodes.size();
  BackwardPlan plan;
  plan.selected = mask;
  plan.active.assign(n, false);
  plan.run_data.assign(n, false);
  plan.run_weights.assign(n, false);
  plan.need_diff_src.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& node = topo.nodes[i];
    bool selected = false;
    for (int p : node.params) selected = selected || mask[p];
    bool active = selected || node.requires_grad;
    plan.need_diff_src[i].assign(node.inputs.size(), false);
    for (std::size_t j = 0; j < node.inputs.size(); ++j) {
      const bool upstream = plan.active[node.inputs[j]];
      plan.need_diff_src[i][j] = upstream;
      plan.run_data[i] = plan.run_data[i] || upstream;
      active = active || upstream;
    }
    plan.active[i] = active;
    plan.run_weights[i] = selected;
  }
  return plan;
}

// Offsets of buffers in one arena, from their lifetimes.
struct MemoryPlan {
  std::vector<std::int64_t> act_offset;   // per value; -1 = pinned (own buffer)
  std::vector<std::int64_t> grad_offset;  // per value; -1 = none or pinned
  // per node, per input: offset of the buffer its backward_data writes that
  // input's gradient to, when another consumer wrote the value's gradient
  // first (the graph then adds it in); -1 = writes the gradient directly.
  std::vector<std::vector<std::int64_t>> temp_offset;
  // per node: offset of its saved buffer (Node::saved_bytes), where backward_data runs; else -1.
  std::vector<std::int64_t> saved_offset;
  std::int64_t arena_bytes = 0;
};

struct Lifetime {
  std::int64_t bytes;
  int begin, end;  // inclusive steps of the timeline
};

// Greedy offset assignment, largest buffer first, lowest offset that does not
// collide with any placed buffer whose lifetime overlaps. Offsets are 64-byte aligned.
inline std::vector<std::int64_t> assign_offsets(const std::vector<Lifetime>& items, std::int64_t& total) {
  std::vector<int> order(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) order[i] = static_cast<int>(i);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return items[a].bytes > items[b].bytes; });
  std::vector<std::int64_t> offset(items.size(), -1);
  std::vector<int> placed;
  total = 0;
  for (int i : order) {
    const auto size = (items[i].bytes + 63) / 64 * 64;
    // Intervals occupied, in offset order, by buffers alive at the same time.
    std::vector<std::pair<std::int64_t, std::int64_t>> busy;
    for (int j : placed)
      if (items[j].begin <= items[i].end && items[i].begin <= items[j].end)
        busy.emplace_back(offset[j], offset[j] + (items[j].bytes + 63) / 64 * 64);
    std::sort(busy.begin(), busy.end());
    std::int64_t at = 0;
    for (const auto& [lo, hi] : busy) {
      if (at + size <= lo) break;
      at = std::max(at, hi);
    }
    offset[i] = at;
    total = std::max(total, at + size);
    placed.push_back(i);
  }
  return offset;
}

// Lifetimes on the timeline: node i's forward is step i, its backward is step
// 2n-1-i. A value lives from its forward until its last reader; a gradient from
// the first backward that writes it until its producer's backward has read it;
// a node's saved buffer from its forward to its backward, where that runs.
inline MemoryPlan plan_memory(const Topology& topo, const BackwardPlan& plan) {
  const int n = static_cast<int>(topo.nodes.size());
  auto fwd = [](int i) { return i; };
  auto bwd = [n](int i) { return 2 * n - 1 - i; };
  std::vector<int> act_end(n), grad_begin(n, 2 * n), grad_first_writer(n, -1);
  for (int i = 0; i < n; ++i) act_end[i] = fwd(i);
  for (int i = 0; i < n; ++i) {
    const auto& node = topo.nodes[i];
    const bool reads_in =
        (plan.run_data[i] && node.data_reads_inputs) || (plan.run_weights[i] && node.weights_reads_inputs);
    const bool reads_out =
        (plan.run_data[i] && node.data_reads_output) || (plan.run_weights[i] && node.weights_reads_output);
    if (reads_out) act_end[i] = std::max(act_end[i], bwd(i));
    for (std::size_t j = 0; j < node.inputs.size(); ++j) {
      const int v = node.inputs[j];
      act_end[v] = std::max(act_end[v], reads_in ? bwd(i) : fwd(i));
      if (plan.need_diff_src[i][j] && bwd(i) < grad_begin[v]) {
        grad_begin[v] = bwd(i);
        grad_first_writer[v] = i;
      }
    }
  }
  // A folded convolution reads its inputs while it writes its map's output.
  for (const auto& [c, b] : topo.folds)
    if (fold_applies(plan, c, b))
      for (int v : topo.nodes[std::size_t(c)].inputs) act_end[v] = std::max(act_end[v], fwd(b));
  std::vector<Lifetime> items;
  std::vector<int> act_item(n, -1), grad_item(n, -1), saved_item(n, -1);
  std::vector<std::vector<int>> temp_item(n);
  for (int i = 0; i < n; ++i) {
    const auto& node = topo.nodes[i];
    if (!node.is_input && !node.is_output) {
      act_item[i] = static_cast<int>(items.size());
      items.push_back({node.bytes, fwd(i), act_end[i]});
    }
    if (plan.run_data[i] && node.saved_bytes > 0) {
      saved_item[i] = static_cast<int>(items.size());
      items.push_back({node.saved_bytes, fwd(i), bwd(i)});
    }
    if (plan.active[i] && !node.is_output && !node.is_input && grad_first_writer[i] >= 0) {
      grad_item[i] = static_cast<int>(items.size());
      items.push_back({node.bytes, grad_begin[i], bwd(i)});
    }
  }
  // A second writer of a gradient (a value with several consumers) writes into
  // a temporary that is added into the gradient right after its backward_data.
  std::vector<bool> written(n, false);
  for (int i = n - 1; i >= 0; --i) {
    const auto& node = topo.nodes[i];
    temp_item[i].assign(node.inputs.size(), -1);
    for (std::size_t j = 0; j < node.inputs.size(); ++j) {
      const int v = node.inputs[j];
      if (!plan.need_diff_src[i][j]) continue;
      if (!written[v] && grad_first_writer[v] == i) {
        written[v] = true;
        continue;
      }
      written[v] = true;
      temp_item[i][j] = static_cast<int>(items.size());
      items.push_back({topo.nodes[v].bytes, bwd(i), bwd(i)});
    }
  }
  MemoryPlan mp;
  const auto offsets = assign_offsets(items, mp.arena_bytes);
  auto at = [&](int item) { return item < 0 ? std::int64_t{-1} : offsets[item]; };
  mp.act_offset.resize(n);
  mp.grad_offset.resize(n);
  mp.temp_offset.resize(n);
  mp.saved_offset.resize(n);
  for (int i = 0; i < n; ++i) {
    mp.act_offset[i] = at(act_item[i]);
    mp.saved_offset[i] = at(saved_item[i]);
    mp.grad_offset[i] = at(grad_item[i]);
    for (int item : temp_item[i]) mp.temp_offset[i].push_back(at(item));
  }
  return mp;
}

}  // namespace elastic
